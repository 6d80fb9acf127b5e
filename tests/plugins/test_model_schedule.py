"""parallel_residuals and depth_recurrence against PR #1493's own GPT on small shapes, and the
recurrence switch under torch.compile.

The fixture (tools/make_model_schedule_goldens.py) holds the record model's logits for four settings
(neither, parallel from block 4, blocks 2..3 looped twice more, both) with one state dict; the record's
other parts at these settings are pgolf's partial_rope (4 dims), ln_scale and leaky_relu2, and its
skip gates are off (pgolf's U-Net skips are the baseline's ungated ones)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pgolf_core.registry import load_recipe
from pgolf_core.run import build_model
from pgolf_core.testing import PluginContract, assert_matches_golden
from pgolf_core.types import dump_toml

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "model_schedule_golden.pt"
PARALLEL = {"parallel_residuals": {"start_layer": 4}}
RECURRENCE = {"depth_recurrence": {"loop_start": 2, "loop_end": 3, "num_loops": 2, "start_frac": 0.5}}
CONFIGS = {"base": {}, "parallel": PARALLEL, "recurrence": RECURRENCE, "both": {**PARALLEL, **RECURRENCE}}
# fp32 on CPU: at most 7.2e-7 from the fixture under ATEN_CPU_CAPABILITY=default (measured); 14x margin.
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURE, weights_only=False)["pr1493"]


def record_model(tmp_path: Path, plugins: dict, shapes: dict):
    tables = {"plugins": {"partial_rope": {"dims": shapes["rope_dims"]}, "ln_scale": {}, "leaky_relu2": {}, **plugins}}
    path = tmp_path / "recipe.toml"
    path.write_text(dump_toml(tables))
    sets = [
        f"model.vocab_size={shapes['vocab']}", f"model.num_layers={shapes['layers']}",
        f"model.model_dim={shapes['dim']}", f"model.num_heads={shapes['heads']}",
        f"model.num_kv_heads={shapes['kv_heads']}", f"model.mlp_mult={float(shapes['mlp_mult'])}",
        "model.qk_gain_init=5.25", f"train.train_seq_len={shapes['seq']}",
        f"train.train_batch_tokens={shapes['seq'] * 8}",
    ]  # fmt: skip
    return build_model(load_recipe(path, sets))


@pytest.mark.parametrize("config", CONFIGS)
def test_logits_equal_the_records(config, golden, tmp_path):
    shapes = torch.load(FIXTURE, weights_only=False)["shapes"]
    model = record_model(tmp_path, CONFIGS[config], shapes)
    want = golden["configs"][config]
    weights = dict(golden["state_dict"])
    weights["skip_weights"] = weights["skip_weights"][: model.skip_weights.size(0)]  # the record sizes it looped
    model.load_state_dict(weights, strict=True)
    order = model.layer_orders[model.layer_phase]
    assert [*want["layers"]["encoder"], *want["layers"]["decoder"]] == list(order)
    with torch.no_grad():
        logits = model.forward_logits(torch.as_tensor(golden_ids()))
    assert_matches_golden(logits, want["logits"], atol=ATOL, what=f"PR #1493 logits, {config}")


def golden_ids() -> torch.Tensor:
    return torch.load(FIXTURE, weights_only=False)["input_ids"]


def test_recurrence_sizes_the_skips_for_the_looped_order(tmp_path, golden):
    shapes = torch.load(FIXTURE, weights_only=False)["shapes"]
    plain, looped = record_model(tmp_path, {}, shapes), record_model(tmp_path, RECURRENCE, shapes)
    assert plain.skip_weights.shape == (3, 24)
    assert looped.skip_weights.shape == tuple(golden["init"]["skip_weights"]["shape"])
    assert sum(p.numel() for p in looped.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * 24
    assert looped.layer_orders == (tuple(range(6)), (0, 1, 2, 3, 2, 3, 2, 3, 4, 5)) and looped.layer_phase == 1


TINY_RECURRENCE = {"loop_start": 1, "loop_end": 2, "num_loops": 1, "start_frac": 0.5}


def recurrence_contract() -> PluginContract:
    """The contract's tiny run (4 layers, 6 steps) with depth_recurrence's `TINY` settings, which the switch step
    and the skip count below follow from: blocks 1..2 looped once more from half the steps on."""
    contract = PluginContract("depth_recurrence")
    assert dict(contract.tiny.settings) == TINY_RECURRENCE and not contract.tiny.overrides
    return contract


@pytest.mark.slow  # the default run has the same check: test_contract's no-recompile test [depth_recurrence]
def test_recurrence_switches_mid_run_and_never_recompiles_after_warm_up(sample_cache, tmp_path):
    """The tiny run's training steps compiled (aot_eager on CPU): the warm-up compiles both orders, and the
    switch at half the steps (step 3, test below) then recompiles nothing (`fail_on_recompile`)."""
    contract = recurrence_contract()
    contract.check_no_recompile(tmp_path)


def test_recurrence_switch_step_is_reported(sample_cache, tmp_path):
    contract = recurrence_contract()
    with_it, without = contract.check_effect(tmp_path)
    assert with_it["plugin_reports"]["depth_recurrence/on_at_step"] == 3  # 6 steps, start_frac 0.5
    assert with_it["model_params"] == without["model_params"] + 32  # one more skip weight (4 -> 6 virtual layers: 3)


def test_step_zero_validation_scores_the_plain_order_with_or_without_warm_up(sample_cache, tmp_path, monkeypatch):
    """Training, and its step-0 validation, start with the plain layer order whether or not warm-up steps ran
    (the built model holds the looped order, for export and `pgolf eval`). At init the blocks' output
    projections are zero, so the order does not show in the loss: a spy reads the phase each validation sees."""
    from pgolf_core.run import Run, train

    seen: list[int] = []
    evaluate = Run.evaluate
    monkeypatch.setattr(Run, "evaluate", lambda run, model: seen.append(run.base.layer_phase) or evaluate(run, model))
    contract = recurrence_contract()
    for warmup in (0, 1):
        seen.clear()
        extra = [f"train.warmup_steps={warmup}", "train.val_loss_every=4", "train.iterations=4"]
        train(contract.recipe(tmp_path / f"w{warmup}", extra=extra), tmp_path / f"w{warmup}" / "run", interactive=False)
        assert seen == [0, 1], f"warmup_steps={warmup}: validations saw layer phases {seen}"  # the loop from step 2
