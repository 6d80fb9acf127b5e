"""Same model as PR #297 and PR #415 (the two seed records with test-time training): pgolf's models
built from `recipes/pr297.toml` and `recipes/pr415.toml` take the record `GPT`'s state dict with
strict keys, at small shapes and at full size, and compute the same logits (golden fixtures made by
`tools/make_ttt_record_goldens.py` from the records' own code). The TTT itself is tested elsewhere.

Measured |pgolf - record| (fp32, CPU; fixtures made on AVX512, where everything is bit-identical):
with ATEN_CPU_CAPABILITY=avx2 / default, logits <= 2.7e-6 / 5.4e-6, logsumexp and losses <= 9.5e-7
at sequence lengths 128 and 2048 (tolerance 1e-4: an >= 18x margin); the QAT training losses
<= 9.5e-7 (tolerance 1e-5: >= 10x); the phase-init resid_mix bit-identical everywhere; the Overtone
spectrum S_k/S_1 within 3.5e-7 of the record's (tolerance 1e-5: >= 28x).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pgolf_plugins import int6_export, qat

from pgolf_core import load_recipe
from pgolf_core.registry import create_manager
from pgolf_core.run import build_model

from .golden import FIXTURES, assert_matches_golden, randomize

ROOT = Path(__file__).resolve().parents[2]
SMALL = [  # the generator's record environment (VOCAB_SIZE=128, MODEL_DIM=128, ...)
    "model.vocab_size=128",
    "model.model_dim=128",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "plugins.bigram_hash.buckets=64",
    "plugins.bigram_hash.dim=32",
]
CASES = {
    "pr297": (SMALL, 297, 22_368_841),
    "pr415": ([*SMALL, "plugins.value_embed.dim=32"], 415, 26_993_756),
}


def golden(name: str) -> dict:
    return torch.load(FIXTURES / f"record_{name}_golden.pt", weights_only=False)


def small(name: str):
    recipe = load_recipe(ROOT / "recipes" / f"{name}.toml", CASES[name][0])
    pm = create_manager(recipe)
    return build_model(recipe, pm), pm, recipe


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_size_parameter_count_and_the_records_state_dict_layout(name):
    with torch.device("meta"):  # shapes only: no 27M-parameter init on the CPU
        model = build_model(load_recipe(ROOT / "recipes" / f"{name}.toml"))
    assert sum(p.numel() for p in model.parameters()) == CASES[name][2]
    assert shapes(model) == golden(name)["full_shapes"]  # the record's full-size names and shapes


@pytest.mark.parametrize("name", sorted(CASES))
def test_record_state_dict_loads_strictly_and_gives_the_records_logits(name):
    model, _, _ = small(name)
    g = golden(name)
    assert shapes(model) == g["shapes"]
    model.load_state_dict(randomize(model.state_dict(), CASES[name][1]), strict=True)
    assert_matches_golden(model, g)


def _train_loss(model, g) -> float:
    model.train()
    with torch.no_grad():
        return model(g["x128"].long(), g["y128"].long()).item()


def test_pr297_late_qat_switches_at_85_percent_of_the_wallclock_with_the_records_grid():
    model, pm, recipe = small("pr297")
    g = golden("pr297")
    model.load_state_dict(randomize(model.state_dict(), 297), strict=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["base_lr"] = 0.1
    reports: dict = {}
    state = SimpleNamespace(model=model, recipe=recipe, optimizers=SimpleNamespace(all=[opt]), step=7,
                            lr_scale=0.3, elapsed_ms=0.849 * 600_000, report=reports.__setitem__)  # fmt: skip
    pm.hook.pgolf_step_start(state=state)
    assert abs(_train_loss(model, g) - g["loss128"].item()) <= 1e-5 and not reports  # not yet
    state.step, state.elapsed_ms = 8, 0.85 * 600_000
    pm.hook.pgolf_step_start(state=state)
    assert reports["late_qat/activated_step"] == 8 and reports["late_qat/wallclock_frac"] == 0.85
    assert opt.param_groups[0]["base_lr"] == 0.05  # halved once, when QAT switches on
    assert abs(_train_loss(model, g) - g["qat_train_loss128"].item()) <= 1e-5
    pm.hook.pgolf_step_start(state=state)
    assert opt.param_groups[0]["base_lr"] == 0.05
    assert type(model.bigram.proj) is not qat.FakeQuantLinear  # the record's set: the six block linears
    model.eval()
    with torch.no_grad():  # eval mode: no fake quantization (the record checks self.training)
        assert abs(model(g["x128"].long(), g["y128"].long()).item() - g["loss128"].item()) <= 1e-5


def test_pr415_late_qat_reproduces_the_records_training_loss():
    model, pm, recipe = small("pr415")
    g = golden("pr415")
    model.load_state_dict(randomize(model.state_dict(), 415), strict=True)
    reports: dict = {}
    state = SimpleNamespace(model=model, recipe=recipe, step=3, lr_scale=0.1, report=reports.__setitem__)
    pm.hook.pgolf_step_start(state=state)
    assert not reports and abs(_train_loss(model, g) - g["loss128"].item()) <= 1e-5
    state.lr_scale = 0.0999
    pm.hook.pgolf_step_start(state=state)
    assert reports["late_qat/activated_step"] == 3
    assert abs(_train_loss(model, g) - g["qat_train_loss128"].item()) <= 1e-5


def test_pr297_overtone_and_phase_init_match_the_records_init():
    model, _, _ = small("pr297")
    g = golden("pr297")
    ours = torch.stack([b.resid_mix.detach() for b in model.blocks])
    assert torch.equal(ours, g["init_resid_mix"])
    s = torch.linalg.svdvals(model.tok_emb.weight.detach().double())
    record = g["init_tok_emb_svals"]
    assert (s / s[0] - record / record[0]).abs().max().item() <= 1e-5
    k = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    assert (s / s[0] - k**-0.5).abs().max().item() <= 1e-5
    assert abs(s[0].item() - record[0].item()) <= 0.1 * record[0].item()  # the same scale (other draws)
    assert math.isclose(ours[0, 0, 0].item(), 1 / (1 + math.exp(1.5)), rel_tol=1e-6)


def test_pr297_int6_rows_match_the_records_quantizer():
    g = golden("pr297")
    for w, expected in zip(g["int6_inputs"], g["int6"], strict=True):
        q, s = int6_export.int6_rowmax_eps(w)
        assert torch.equal(q, expected["q"]) and torch.equal(s, expected["scale"])
    q, s = int6_export.int6_rowmax(g["int6_inputs"][1])  # #415's rule floors the scale at 1/31: other integers
    assert not torch.equal(q, g["int6"][1]["q"])
