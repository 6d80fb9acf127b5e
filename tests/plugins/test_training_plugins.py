"""Training-time plugins: `ema`, `swa`, `qat`, `late_qat`.

Exact math against hand loops, the records' QAT training losses (golden fixtures), and the
compile contract: flipping late QAT's `fake_quant_on` buffers changes the compiled graph's loss and
gradients with no recompilation."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pgolf_plugins import ema, qat, swa

from pgolf_core import CastedLinear
from pgolf_core.registry import create_manager, load_recipe
from pgolf_core.run import build_model
from pgolf_core.types import RecipeError, dump_toml

from .golden import FIXTURES, randomize
from .test_record_models import PR63_SMALL, PR194_SMALL, PR414_SMALL

TINY = [
    "model.model_dim=32",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.num_layers=2",
    "model.vocab_size=64",
    "train.train_seq_len=16",
]


def recipe_with(tmp_path, tables: dict, text: str = "", overrides=TINY, disable=()):
    path = tmp_path / "r.toml"
    path.write_text(text + "\n" + dump_toml({"plugins": tables}))
    return load_recipe(path, overrides, disable=disable)


def fake_state(model, step=0, lr_scale=1.0):
    reports: dict = {}
    return SimpleNamespace(
        model=model,
        step=step,
        lr_scale=lr_scale,
        reports=reports,
        report=lambda key, value: reports.__setitem__(key, value),
    )


# --- configuration -------------------------------------------------------------------------------

CONFIGS = {
    "ema": {"decay": 0.99},
    "swa": {"every": 10, "threshold": 0.5, "check": "before"},
    "qat": {
        "scale": "clip_floor",
        "qmin": -31,
        "precision": "activation",
        "in_eval": True,
        "export_match": True,
        "scope": "blocks",
    },
    "late_qat": {"qmin": -31, "precision": "fp32_ste", "threshold": 0.1, "effective": False},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trips_and_rejects_unknown_keys(name, tmp_path):
    recipe = recipe_with(tmp_path, {name: CONFIGS[name]}, overrides=())
    for key, value in CONFIGS[name].items():
        assert getattr(recipe.plugins[name].config, key) == value
    again = tmp_path / "again.toml"
    again.write_text(recipe.to_toml())
    assert load_recipe(again).plugins[name].config == recipe.plugins[name].config
    with pytest.raises(RecipeError, match="unknown key 'decya'"):
        recipe_with(tmp_path, {name: {"decya": 1}}, overrides=())


@pytest.mark.parametrize(
    "name, table, expected",
    [
        ("qat", {"precision": "fp64"}, "precision: expected one of 'fp32_quant', 'fp32_ste', 'activation', got 'fp64'"),
        ("qat", {"qmin": 0}, "qmin=0: expected < 0"),
        ("qat", {"qmax": 0}, "qmax=0: expected > 0"),
        ("late_qat", {"scope": "most"}, "scope: expected one of 'all', 'blocks', got 'most'"),
        ("late_qat", {"threshold": 0.0}, "threshold=0.0: expected a value in (0, 1]"),
        ("swa", {"check": "during"}, "check: expected one of 'after', 'before', got 'during'"),
        ("swa", {"every": 0}, "every=0: expected >= 1"),
        ("swa", {"threshold": 1.5}, "threshold=1.5: expected a value in (0, 1]"),
        ("ema", {"decay": 1.0}, "decay=1.0: expected a value in (0, 1)"),
    ],
)
def test_bad_choices_fail_when_the_run_loads(name, table, expected, tmp_path):
    """The settings' declared ranges and choices, reported with the recipe file, table and key."""
    with pytest.raises(RecipeError, match=re.escape(f"r.toml: [plugins.{name}] {expected}")):
        create_manager(recipe_with(tmp_path, {name: table}, overrides=()))


def test_ema_and_swa_cannot_both_be_enabled(tmp_path):
    with pytest.raises(RecipeError, match="exclusive hook pgolf_final_weights"):
        create_manager(recipe_with(tmp_path, {"ema": {}, "swa": {}}, overrides=()))


# --- EMA -----------------------------------------------------------------------------------------


def test_ema_matches_a_hand_loop_exactly(tmp_path):
    model = build_model(recipe_with(tmp_path, {"ema": {}}))
    model.tok_emb.bfloat16()  # a bf16 table, as on GPU: the shadow still reads and keeps it in fp32
    plugin = ema.EMA(ema.Config(decay=0.9))
    state = fake_state(model)
    plugin.pgolf_step_start(state)
    expected = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        if step:
            plugin.pgolf_step_start(state)  # later step starts leave the shadow alone
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype))
        state.step = step + 1
        plugin.pgolf_post_step(state)
        for k, w in model.state_dict().items():
            expected[k].mul_(0.9).add_(w.float(), alpha=0.1)
    final = plugin.pgolf_final_weights(state)
    live = model.state_dict()
    assert state.reports == {"ema/applied": 3}
    assert final.keys() == live.keys() and final["tok_emb.weight"].dtype == torch.bfloat16
    for k in live:
        assert torch.equal(final[k], expected[k].to(live[k].dtype)), k
    assert not torch.equal(final["blocks.0.attn.c_q.weight"], live["blocks.0.attn.c_q.weight"])


def test_ema_without_steps_keeps_the_live_weights():
    assert ema.EMA(ema.Config()).pgolf_final_weights(fake_state(torch.nn.Linear(2, 2))) is None


# --- SWA -----------------------------------------------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.e = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))


@pytest.mark.parametrize("check, snapshots, start", [("after", [4, 6], 4), ("before", [5, 7], 4)])
def test_swa_snapshot_schedule_and_average(check, snapshots, start):
    model = Tiny()
    plugin = swa.SWA(swa.Config(every=2, threshold=0.5, check=check))
    state = fake_state(model)
    for i, scale in enumerate([1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1]):  # the LR scale of step i
        state.lr_scale = scale
        with torch.no_grad():
            model.w.fill_(i + 1)  # the weights after step i's optimizer step
            model.e.fill_(i + 1)
        state.step = i + 1
        plugin.pgolf_post_step(state)
    final = plugin.pgolf_final_weights(state)
    mean = sum(snapshots) / len(snapshots)
    assert state.reports == {"swa/start_step": start, "swa/count": 2}
    assert torch.equal(final["w"], torch.full((3,), mean)) and final["e"].dtype == torch.bfloat16
    assert torch.equal(final["e"], torch.full((2,), mean, dtype=torch.bfloat16))
    assert not torch.equal(final["w"], model.w.detach())


def test_swa_needs_two_snapshots():
    model, plugin = Tiny(), swa.SWA(swa.Config(every=1, threshold=0.5))
    state = fake_state(model, step=1, lr_scale=0.1)
    plugin.pgolf_post_step(state)
    assert plugin.pgolf_final_weights(state) is None and state.reports["swa/count"] == 1


# --- QAT: exact grids, precision rules, STE ---------------------------------------------------------

# Each record's QAT settings (recipes/pr63.toml and pr194.toml set the same; #414's are the defaults).
RECORD_QAT = {
    "pr414": {},
    "pr194": {"qmin": -31, "precision": "fp32_ste"},
    "pr63": {"scale": "clip_floor", "qmin": -31, "precision": "activation", "in_eval": True},
}

W = torch.tensor([[0.5, -0.25, 0.1], [3.1, -3.1, 0.0]])


@pytest.mark.parametrize(
    "rule, export_match, row0, row1",
    [
        ("pr414", False, [16 / 31, -8 / 31, 3 / 31], [3.1, -3.1, 0.0]),  # s = max(m/31, 1/31)
        ("pr63", False, [0.5, -16 * 0.5 / 31, 6 * 0.5 / 31], [3.1, -3.1, 0.0]),  # s = max(m, 1/31)/31
        (
            "pr414",
            True,
            [16 * 0.032257080078125, -8 * 0.032257080078125, 3 * 0.032257080078125],
            [31 * 0.0999755859375, -31 * 0.0999755859375, 0.0],
        ),  # fp16 scales: fp16(1/31), fp16(0.1)
    ],
)
def test_fake_quantize_grids(rule, export_match, row0, row1):
    config = qat.Config(**RECORD_QAT[rule], export_match=export_match)
    got = qat.fake_quantize(W, qat.resolve_rule(config))
    assert torch.allclose(got, torch.tensor([row0, row1]), rtol=0, atol=1e-7)


def _record_forward(rule: str, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each record's CastedLinear QAT forward, re-derived from the record scripts."""
    if rule == "pr414":  # quantize an fp32 copy ([-32, 31]), cast, STE in the activation dtype
        w = weight.to(x.dtype)
        s = (weight.abs().amax(dim=1) / 31.0).clamp_min(1.0 / 31.0)
        w_q = (torch.clamp(torch.round(weight / s[:, None]), -32, 31) * s[:, None]).to(x.dtype)
        return F.linear(x, w + (w_q - w))
    if rule == "pr194":  # STE on the fp32 master (±31), then cast
        s = (weight.abs().amax(dim=1, keepdim=True) / 31.0).clamp(min=1.0 / 31.0)
        return F.linear(x, (weight + ((weight / s).round().clamp(-31, 31) * s - weight)).to(x.dtype))
    w = weight.to(x.dtype)  # pr63: cast first, quantize in the activation dtype
    s = w.abs().amax(dim=1).clamp_min(1.0 / 31.0) / 31.0
    return F.linear(x, w + ((w / s[:, None]).round().clamp(-31, 31) * s[:, None] - w))


def test_precision_rules_match_each_record_in_bf16():
    torch.manual_seed(0)
    weight, x = torch.randn(24, 40) * 0.7, torch.randn(3, 40).bfloat16()
    outputs = {}
    for rule in ("pr414", "pr194", "pr63"):
        layer = qat.FakeQuantLinear(40, 24, qat.resolve_rule(qat.Config(**RECORD_QAT[rule])), on=True)
        layer.weight.data.copy_(weight)
        outputs[rule] = layer(x)
        assert outputs[rule].dtype == torch.bfloat16
        assert torch.equal(outputs[rule], _record_forward(rule, weight, x)), rule
    assert not torch.equal(outputs["pr63"], outputs["pr414"])


@pytest.mark.parametrize("rule", ["pr414", "pr194", "pr63"])
def test_straight_through_gradient(rule):
    torch.manual_seed(1)
    layer = qat.FakeQuantLinear(16, 8, qat.resolve_rule(qat.Config(**RECORD_QAT[rule])), on=True)
    x = torch.randn(4, 16)
    (layer(x) ** 2).sum().backward()
    w_q = qat.fake_quantize(layer.weight, layer.rule).requires_grad_()
    (F.linear(x, w_q) ** 2).sum().backward()
    assert not torch.equal(w_q.detach(), layer.weight.detach())
    assert torch.allclose(layer.weight.grad, w_q.grad, rtol=1e-5, atol=1e-6)


def test_switch_off_is_the_plain_linear_and_buffer_is_not_saved():
    layer = qat.FakeQuantLinear(16, 8, qat.resolve_rule(qat.Config()), on=False)
    plain = CastedLinear(16, 8)
    plain.weight = layer.weight
    x = torch.randn(4, 16)
    assert torch.equal(layer(x), plain(x)) and list(layer.state_dict()) == ["weight"]


# --- QAT: the records' training losses (golden fixtures) ------------------------------------------

RECORDS = {
    "pr414": (PR414_SMALL, "pr414_golden.pt", 414),
    "pr194": (PR194_SMALL, "pr194_golden.pt", 194),
    "pr63": (PR63_SMALL, "pr63_golden.pt", 63),
}


def record_model(tmp_path, rule: str, plugin: str = "qat", **settings):
    text, fixture, seed = RECORDS[rule]
    skip_init = ["ortho_init"] if "ortho_init" in text else []  # the weights are overwritten anyway
    recipe = recipe_with(tmp_path, {plugin: {**RECORD_QAT[rule], **settings}}, text, overrides=(), disable=skip_init)
    pm = create_manager(recipe)
    model = build_model(recipe, pm)
    model.load_state_dict(randomize(model.state_dict(), seed), strict=True)
    return model, pm, torch.load(FIXTURES / fixture)


def loss_of(model, golden, train: bool) -> float:
    model.train(train)
    with torch.no_grad():
        return model(golden["x128"].long(), golden["y128"].long()).item()


@pytest.mark.parametrize("rule", sorted(RECORDS))
def test_qat_reproduces_the_records_training_loss(rule, tmp_path):
    model, pm, golden = record_model(tmp_path, rule)
    state = fake_state(model)
    pm.hook.pgolf_step_start(state=state)
    assert abs(loss_of(model, golden, True) - golden["qat_train_loss128"].item()) <= 1e-5
    qat_in_eval = rule == "pr63"  # #63's global flag had no train/eval check, until export
    expected_eval = golden["qat_train_loss128" if qat_in_eval else "loss128"].item()
    assert abs(loss_of(model, golden, False) - expected_eval) <= 1e-5
    pm.hook.pgolf_fit_end(state=state)
    assert abs(loss_of(model, golden, False) - golden["loss128"].item()) <= 1e-5


def test_late_qat_reproduces_pr414_after_the_switch_and_covers_plugin_linears(tmp_path):
    model, pm, golden = record_model(tmp_path, "pr414", "late_qat", threshold=0.15)
    assert isinstance(model.bigram.proj, qat.FakeQuantLinear)
    assert isinstance(model.value_embed.ve_shared.proj, qat.FakeQuantLinear)
    state = fake_state(model, step=7, lr_scale=0.2)
    pm.hook.pgolf_step_start(state=state)
    assert abs(loss_of(model, golden, True) - golden["loss128"].item()) <= 1e-5  # not yet
    state.step, state.lr_scale = 8, 0.149
    pm.hook.pgolf_step_start(state=state)
    assert state.reports["late_qat/activated_step"] == 8
    assert abs(loss_of(model, golden, True) - golden["qat_train_loss128"].item()) <= 1e-5
    tables = {"bigram_hash": {"buckets": 16, "dim": 8}, "late_qat": {"scope": "blocks"}}
    blocks_only = build_model(recipe_with(tmp_path, tables))
    assert type(blocks_only.bigram.proj) is CastedLinear
    assert isinstance(blocks_only.blocks[0].mlp.fc, qat.FakeQuantLinear)


# --- compile contract ----------------------------------------------------------------------------


def _train(model, compiled, hook, batches, recompile_ok_at_start: bool):
    """Five SGD steps driven like the loop (step start, forward/backward/step, post step); the LR
    scale crosses late_qat's threshold (0.5) at step 2."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    state, losses, grads = fake_state(model), [], []
    for step, scale in enumerate([1.0, 0.8, 0.4, 0.3, 0.2]):
        state.step, state.lr_scale = step, scale
        hook.pgolf_step_start(state=state)
        with torch._dynamo.config.patch(error_on_recompile=step > 0 or not recompile_ok_at_start):
            loss = compiled(batches[step][:, :-1], batches[step][:, 1:])
        loss.backward()
        losses.append(loss.item())
        grads.append(model.blocks[0].mlp.fc.weight.grad.clone())
        if step == 2:  # the compiled graph sees the buffers: the same loss as the eager model
            with torch.no_grad():
                assert abs(model(batches[step][:, :-1], batches[step][:, 1:]).item() - loss.item()) <= 1e-5
        opt.step()
        opt.zero_grad()
        state.step = step + 1
        hook.pgolf_post_step(state=state)
    return losses, grads, state.reports


def test_late_qat_switch_takes_effect_in_the_compiled_graph_without_recompiling(tmp_path):
    recipe = recipe_with(tmp_path, {"late_qat": {}}, overrides=[*TINY, "model.num_layers=1"])
    model = build_model(recipe).train()
    initial = randomize(model.state_dict(), 5)
    batches = [torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(i)) for i in range(5)]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)
    runs = {}
    for effective in (True, False):  # the same compiled model: the second run may not recompile at all
        model.load_state_dict(initial)
        qat.set_qat(model, False)
        pm = create_manager(recipe_with(tmp_path, {"late_qat": {"threshold": 0.5, "effective": effective}}))
        runs[effective] = _train(model, compiled, pm.hook, batches, recompile_ok_at_start=effective)
    (on_losses, on_grads, on_reports), (off_losses, off_grads, off_reports) = runs[True], runs[False]
    assert on_reports["late_qat/activated_step"] == off_reports["late_qat/activated_step"] == 2
    assert off_reports["late_qat/effective"] is False
    assert on_losses[:2] == off_losses[:2]  # before the switch: identical runs
    assert all(torch.equal(a, b) for a, b in zip(on_grads[:2], off_grads[:2], strict=True))
    assert on_losses[2] != off_losses[2] and not torch.equal(on_grads[2], off_grads[2])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_graph_breaks(name, tmp_path):
    recipe = recipe_with(tmp_path, {name: {}})
    pm = create_manager(recipe)
    model = build_model(recipe, pm)
    pm.hook.pgolf_step_start(state=fake_state(model, lr_scale=0.0))  # QAT switched on
    if name.endswith("qat"):
        assert all(m.fake_quant_on.item() == 1.0 for m in model.modules() if isinstance(m, qat.FakeQuantLinear))
    x = torch.randint(0, 64, (2, 16))
    explanation = torch._dynamo.explain(model.train())(x, x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


# --- late QAT: PR #297's wallclock trigger, LR factor and grid ----------------------------------


def _wallclock_state(model, recipe, elapsed_ms, opt):
    reports: dict = {}
    return SimpleNamespace(
        model=model, recipe=recipe, optimizers=SimpleNamespace(all=[opt]), step=4, lr_scale=1.0,
        elapsed_ms=elapsed_ms, reports=reports, report=reports.__setitem__,
    )  # fmt: skip


@pytest.mark.parametrize("cap, elapsed, on", [(600.0, 509_999.0, False), (600.0, 510_000.0, True), (0.0, 1e9, False)])
def test_late_qat_wallclock_trigger_and_lr_factor(cap, elapsed, on, tmp_path):
    """start_frac 0.85: on at elapsed >= 85 % of the cap, whatever the LR scale; never without a cap
    (the record's check needs one). lr_factor multiplies every group's base_lr once, at the switch."""
    table = {"late_qat": {"start_frac": 0.85, "lr_factor": 0.5}}
    recipe = recipe_with(tmp_path, table, overrides=[*TINY, f"train.max_wallclock_seconds={cap}"])
    pm = create_manager(recipe)
    model = build_model(recipe, pm).train()
    opt = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.2, "base_lr": 0.2}])
    state = _wallclock_state(model, recipe, elapsed, opt)
    for _ in range(2):
        pm.hook.pgolf_step_start(state=state)
    layers = [m for m in model.modules() if isinstance(m, qat.FakeQuantLinear)]
    assert layers and all(m.fake_quant_on.item() == float(on) for m in layers)
    assert opt.param_groups[0]["base_lr"] == (0.1 if on else 0.2)
    assert ("late_qat/activated_step" in state.reports) == on


def test_late_qat_defaults_keep_the_lr_threshold_and_the_base_lrs(tmp_path):
    recipe = recipe_with(tmp_path, {"late_qat": {}})
    pm = create_manager(recipe)
    model = build_model(recipe, pm)
    opt = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.2, "base_lr": 0.2}])
    state = _wallclock_state(model, recipe, 1e12, opt)  # any elapsed time: the LR threshold decides
    pm.hook.pgolf_step_start(state=state)
    assert "late_qat/activated_step" not in state.reports
    state.lr_scale = 0.1
    pm.hook.pgolf_step_start(state=state)
    assert state.reports["late_qat/activated_step"] == 4 and opt.param_groups[0]["base_lr"] == 0.2
    assert "late_qat/wallclock_frac" not in state.reports


@pytest.mark.parametrize(
    "table, expected",
    [
        ({"start_frac": 1.5}, "start_frac=1.5: expected a value in [0, 1]"),
        ({"start_frac": -0.1}, "start_frac=-0.1: expected a value in [0, 1]"),
        ({"lr_factor": 0.0}, "lr_factor=0.0: expected > 0"),
    ],
)
def test_late_qat_bad_start_frac_or_lr_factor(table, expected, tmp_path):
    with pytest.raises(RecipeError, match=re.escape(f"[plugins.late_qat] {expected}")):
        create_manager(recipe_with(tmp_path, {"late_qat": table}, overrides=()))


def test_row_max_grid_has_no_floor():
    """PR #297: s = max(m, 1e-12)/31 per row (rows far below 1 keep their own step), [-32, 31]."""
    w = torch.tensor([[0.031, -0.0147, 0.0012], [0.0, 0.0, 0.0]])
    got = qat.fake_quantize(w, qat.resolve_rule(qat.Config(scale="row_max", precision="activation")))
    s = 0.031 / 31.0
    expected = torch.tensor([[31 * s, -15 * s, 1 * s], [0.0, 0.0, 0.0]])  # 14.7 -> 15, 1.2 -> 1
    assert torch.allclose(got, expected, rtol=0, atol=1e-8)
    floored = qat.fake_quantize(w, qat.resolve_rule(qat.Config(scale="scale_floor")))  # #414: step 1/31
    assert torch.allclose(floored[0], torch.tensor([1 / 31, 0.0, 0.0]), rtol=0, atol=1e-8)
