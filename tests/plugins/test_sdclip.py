"""sdclip (+ int6_export's row clips) against PR #1394's own quantizer (tests/fixtures/later_model_golden.pt,
made by tools/make_later_model_goldens.py: the record's `gptq_mixed_quantize` and `gptq_quantize_weight`
with identity Hessians, i.e. round-to-nearest on the record's k·std grid; inputs rebuilt here)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from pgolf_plugins import int6_export, sdclip

from pgolf_core import PgolfError, TensorPlan
from pgolf_core.exporter import ExportContext
from pgolf_core.registry import load_recipe
from pgolf_core.types import RecipeError
from tests.plugins import golden as golden_helpers
from tests.record_rules import pattern_roles

FIXTURE = Path(__file__).parents[1] / "fixtures" / "later_model_golden.pt"
# The record's GPTQ'd kinds (float, > 65,536 elements; tok_emb int8 with k = 20, the matrices int6 with
# k = 12.85) and two tensors it passes through as fp16. Few rows, so that the generator can pick weights
# whose every k·std/qmax lies >= 64 fp32 ulps from an fp16 rounding boundary: a std summed in another
# order (another CPU) cannot change a scale, and the integers and scales are compared bit for bit.
SDCLIP_SHAPES = {
    "tok_emb.weight": (24, 2816),
    "blocks.0.attn.c_q.weight": (16, 4224),
    "blocks.0.attn.proj.weight": (16, 4160),
    "blocks.0.mlp.fc.weight": (32, 2112),
    "blocks.0.mlp.proj.weight": (24, 2816),
    "blocks.0.attn.c_k.weight": (16, 64),
    "blocks.0.attn_scale": (64,),
}
DIRECT_CASES = {  # case -> (shape, clip_sigmas k, clip_range qmax), the record's function called directly
    "k3_r63": ((12, 40), 3.0, 63),
    "k12.85_r31": ((20, 96), 12.85, 31),
    "k20_r127": ((8, 200), 20.0, 127),
    "k2_r7": ((16, 24), 2.0, 7),
}
CONTROL = ("attn_scale",)
TINY = ["model.num_layers=2", "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2"]


def sdclip_weights(seed: int) -> dict[str, torch.Tensor]:
    """Integer-draw weights (the same bits on every CPU; golden.py)."""
    return golden_helpers.randomize({k: torch.zeros(s) for k, s in SDCLIP_SHAPES.items()}, seed)


def direct_weights(seed: int) -> dict[str, torch.Tensor]:
    shapes = {case: shape for case, (shape, _, _) in DIRECT_CASES.items()}
    return golden_helpers.randomize({k: torch.zeros(s) for k, s in shapes.items()}, seed)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURE, weights_only=True)["sdclip"]


class Reports(dict):
    pass


def export(weights, *, with_sdclip: bool = True, config: sdclip.Config | None = None, **int6_cfg):
    """The plan (sdclip) and the format (int6_export) as a run's export calls them."""
    recipe = load_recipe(None, ["export.keep_float_max_numel=65536"])
    reports = Reports()
    ctx = ExportContext(recipe, pattern_roles(weights, CONTROL), reports.__setitem__)
    plan = {name: TensorPlan() for name in weights}
    if with_sdclip:
        sdclip.SDClip(config or sdclip.Config()).pgolf_export_plan(plan=plan, weights=weights, ctx=ctx)
    fmt = int6_export.Int6Export(int6_export.Config(**int6_cfg)).pgolf_export_format(recipe=recipe)
    return fmt.quantize(weights, plan, ctx.roles, ctx.report), plan, reports


def test_defaults_are_the_records(golden):
    cfg = sdclip.Config()
    h = golden["hparams"]
    assert (cfg.matrix_k, cfg.embed_k) == (h["matrix_clip_sigmas"], h["embed_clip_sigmas"]) == (12.85, 20.0)
    assert (h["matrix_bits"], h["embed_bits"]) == (6, 8)  # int6 (+-31) matrices, int8 (+-127) tok_emb


def test_mixed_export_equals_record_gptq_mixed_quantize(golden):
    weights = sdclip_weights(golden["seed"])
    assert {k: digest(v) for k, v in weights.items()} == golden["weights"], "inputs changed: regenerate"
    obj, plan, reports = export(weights)
    want, meta = golden["result"], golden["meta"]
    kinds = {"gptq (int6)": {"type": "int6"}, "gptq (int8)": {"type": "int8"}}
    assert {k: kinds.get(m, "passthrough") for k, m in meta.items()} == obj["m"]
    assert sorted(obj["w"]) == sorted(want)
    for key, t in want.items():
        got = obj["w"][key]
        assert got.dtype == t.dtype and torch.equal(got, t), key
    assert reports["sdclip/tensors"] == {"matrix": 4, "embed": 1}
    assert reports["int6_export/tensors"]["row_clip"] == 5
    assert plan["blocks.0.attn.c_k.weight"].row_clip is None  # under the size threshold: passthrough
    w = weights["blocks.0.mlp.fc.weight"]
    assert torch.equal(plan["blocks.0.mlp.fc.weight"].row_clip, 12.85 * w.std(dim=1))


@pytest.mark.parametrize("case", list(DIRECT_CASES))
def test_row_grid_equals_record_gptq_quantize_weight(golden, case):
    shape, k, r = DIRECT_CASES[case]
    w = direct_weights(golden["direct_seed"])[case]
    want = golden["direct"][case]
    assert digest(w) == want["w"] and (want["clip_sigmas"], want["clip_range"]) == (k, r)
    q, s = int6_export.row_clipped(w, sdclip.row_clip(w, k), r)
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    assert torch.equal(q, want["q"]) and torch.equal(s, want["scale"])
    if k <= 2.0:  # the integer clamp is the clip: weights beyond 2·std are clipped to +-qmax
        assert q.abs().max() == r


def test_sdclip_changes_the_exported_integers(golden):
    weights = sdclip_weights(golden["seed"])
    with_it, _, _ = export(weights)
    without, _, _ = export(weights, with_sdclip=False)
    assert with_it["m"] == without["m"]
    for name in ("blocks.0.mlp.fc.weight", "tok_emb.weight"):
        a, b = with_it["w"][name + ".q"], without["w"][name + ".q"]
        assert (a != b).float().mean() > 0.5, name  # another grid, not a few ties
        assert not torch.equal(with_it["w"][name + ".scale"], without["w"][name + ".scale"])
    assert torch.equal(with_it["w"]["blocks.0.attn.c_k.weight"], without["w"]["blocks.0.attn.c_k.weight"])


def test_all_scheme_uses_the_int6_range_for_every_tensor(golden):
    weights = sdclip_weights(golden["seed"])
    obj, _, _ = export(weights, scheme="all")
    name = "tok_emb.weight"
    q, s = int6_export.row_clipped(weights[name], 20.0 * weights[name].std(dim=1), 31)
    assert torch.equal(obj["quantized"][name], q) and torch.equal(obj["scales"][name], s)
    fc = golden["result"]
    assert torch.equal(obj["quantized"]["blocks.0.mlp.fc.weight"], fc["blocks.0.mlp.fc.weight.q"])


def test_a_zero_row_exports_as_zeros():
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    w[1] = 0.0
    w[2] = 0.25  # constant: std 0 as well
    q, s = int6_export.row_clipped(w, sdclip.row_clip(w, 12.85), 31)
    assert s[1] == 0 and s[2] == 0 and torch.all(q[1] == 0) and torch.all(q[2].abs() == 31)
    deq = q.float() * s.float()[:, None]
    assert torch.all(deq[1:3] == 0) and torch.isfinite(deq).all()


def test_plans_that_cannot_be_honoured_are_refused(golden):
    weights = sdclip_weights(golden["seed"])
    roles = pattern_roles(weights, CONTROL)
    name = "blocks.0.mlp.fc.weight"
    clip = 12.85 * weights[name].std(dim=1)
    both = {name: TensorPlan(clip_percentile=0.999, row_clip=clip)}
    with pytest.raises(PgolfError, match="both row_clip and clip_percentile for blocks.0.mlp.fc.weight"):
        int6_export.quantize(weights, int6_export.Config(), roles=roles, plan=both)
    bad = {name: TensorPlan(row_clip=clip[:-1])}
    with pytest.raises(PgolfError, match=r"row_clip for blocks.0.mlp.fc.weight has shape \(31,\)"):
        int6_export.quantize(weights, int6_export.Config(), roles=roles, plan=bad)
    stray = {"blocks.0.attn.c_k.weight": TensorPlan(row_clip=torch.ones(16))}
    with pytest.raises(PgolfError, match="row clips for tensors that are not quantized"):
        int6_export.quantize(weights, int6_export.Config(), roles=roles, plan=stray)


def test_recipe_errors_name_the_conflict():
    with pytest.raises(RecipeError, match=r"\[plugins.sdclip\] gptq_lite is enabled too; SDClip replaces"):
        load_recipe(None, TINY, enable=["int6_export", "gptq_lite", "sdclip"])
    with pytest.raises(RecipeError, match=r"\[plugins.sdclip\] needs int6_export"):
        load_recipe(None, TINY, enable=["sdclip"])
    with pytest.raises(RecipeError, match=r"\[plugins.sdclip\] matrix_k=0.0: expected > 0"):
        load_recipe(None, [*TINY, "plugins.sdclip.matrix_k=0"], enable=["int6_export", "sdclip"])
    with pytest.raises(RecipeError, match=r"\[plugins.sdclip\] embed_k=-1.0: expected > 0"):
        load_recipe(None, [*TINY, "plugins.sdclip.embed_k=-1.0"], enable=["int6_export", "sdclip"])
    with pytest.raises(RecipeError, match=r"\[plugins.sdclip\] categories\[1\]: expected one of .*got 'mlps'"):
        load_recipe(None, [*TINY, 'plugins.sdclip.categories=["attn", "mlps"]'], enable=["int6_export", "sdclip"])
    assert sdclip.SDClip.conflicts == ("gptq_lite",) and sdclip.SDClip.requires == ("int6_export",)
    load_recipe(None, TINY, enable=["int6_export", "sdclip"])  # the working pair
