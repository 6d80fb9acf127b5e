"""Export plugins: int6_export and gptq_lite; the built-in zstd codec the records compress with.

Record equivalence uses `tests/fixtures/export_golden.pt`. Its inputs are regenerated here by
`make_weights` (integer draws and exact float arithmetic only, so the bits do not depend on the
CPU's vector unit); its outputs were produced once by the records' own functions on those inputs
(a clone of openai/parameter-golf, not part of this repository):
- `gptq_cases`: PR #414 `quantize_int6_per_row` on `gptq_case_inputs()` (q and scales in full);
- `mixed`: PR #414 `mixed_quantize_int6(sd, {"mlp", "attn"})` and `dequantize_mixed_int6` on
  `make_weights(SPECS_414, 414)` with the record's control patterns (SHA-256 of every tensor);
- `all194`: PR #194 `quantize_state_dict_int6(sd, fp16_names={"tok_emb.weight"})` and its
  dequantizer on `make_weights(SPECS_ALL, 194)`; `all63`: PR #63 `quantize_state_dict_int8`
  (USE_INT6=1, FP16_PASSTHROUGH_PATTERNS=tok_emb) on `make_weights(SPECS_ALL, 63)`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from pgolf_plugins import gptq_lite, int6_export

from pgolf_core import PgolfError, TensorPlan
from pgolf_core.exporter import (
    BUILTIN_CODECS,
    ExportContext,
    ExportStack,
    Int8Format,
    codec_table,
    deserialize,
    serialize,
)
from pgolf_core.registry import load_recipe
from pgolf_core.types import RecipeError
from tests.record_rules import pattern_roles

from .golden import FIXTURES

PR414_CONTROL = (
    "attn_scale",
    "attn_scales",
    "mlp_scale",
    "mlp_scales",
    "resid_mix",
    "resid_mixes",
    "q_gain",
    "skip_weight",
    "skip_weights",
    "smear",
    "dtg_gate",
    "ve_layer_scales",
    "ve_shared.scale",
)
BASELINE_CONTROL = PR414_CONTROL[:9]

# Record key names; sizes straddle the 65,536-element threshold. Every rule of both schemes is hit:
# int6 (attn/mlp, rows of 96..1536, an fp16 matrix, a 1-D tensor), int8 (embed/other, bf16, 3-D),
# small passthrough, a large control tensor, a non-float tensor.
SPECS_414 = [
    ("tok_emb.weight", (1024, 72), torch.bfloat16),
    ("bigram.embed.weight", (2048, 40), torch.float32),
    ("bigram.proj.weight", (96, 40), torch.float32),
    ("bigram.scale", (), torch.float32),
    ("smear.gate", (96,), torch.float32),
    ("blocks.0.attn_scale", (96,), torch.float32),
    ("blocks.0.mlp_scale", (96,), torch.float32),
    ("blocks.0.resid_mix", (2, 96), torch.float32),
    ("blocks.0.attn.c_q.weight", (272, 256), torch.float32),
    ("blocks.0.attn.c_k.weight", (128, 256), torch.float32),
    ("blocks.0.attn.c_v.weight", (288, 256), torch.float32),
    ("blocks.0.attn.proj.weight", (256, 272), torch.float32),
    ("blocks.0.attn.q_gain", (8,), torch.float32),
    ("blocks.0.mlp.fc.weight", (768, 96), torch.float32),
    ("blocks.0.mlp.proj.weight", (96, 768), torch.float32),
    ("blocks.1.attn.c_q.weight", (260, 260), torch.float32),
    ("blocks.1.resid_mix", (2, 40000), torch.float32),
    ("blocks.1.mlp.fc.weight", (1536, 48), torch.float16),
    ("blocks.1.mlp.proj.weight", (48, 1536), torch.float32),
    ("blocks.1.mlp.gate_vec", (70000,), torch.float32),
    ("extra.table3d", (4, 130, 130), torch.float32),
    ("skip_weights", (5, 96), torch.float32),
    ("ve_shared.embed.weight", (1024, 72), torch.float32),
    ("ve_shared.proj.weight", (64, 72), torch.float32),
    ("ve_shared.scale", (), torch.float32),
    ("ve_layer_scales.0", (1,), torch.float32),
    ("step_count", (3,), torch.int64),
]
SPECS_ALL = [s for s in SPECS_414 if not s[0].startswith(("bigram", "ve_", "smear"))] + [
    ("smear_gate_param", (96,), torch.float32),
]


def trained_like(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Heavy-tailed weights whose row maxima span ~0.05 to ~20 (so the 1/31 scale floor and the
    clip search both matter), from integer draws and exact arithmetic only. Matrices get an
    all-zero row, a constant row and a row with one large outlier."""
    u = torch.randint(0, 4096, (4, *shape), generator=g, dtype=torch.int64).sum(0).float()
    x = (u - 8190.0) / 2048.0  # Irwin-Hall(4): mean 0, sd ~1.15, |x| < 4
    spikes = torch.randint(0, 64, shape, generator=g) == 0
    x = torch.where(spikes, x * 6.0, x)
    if len(shape) == 2:
        row_scale = torch.randint(1, 96, (shape[0], 1), generator=g).float() / 64.0
        x = x * row_scale
    if len(shape) == 2 and shape[0] >= 3:
        x[0] = 0.0
        x[1] = 0.375
        x[2, shape[1] // 3] = 24.0
    elif len(shape) != 2:
        x = x * 0.5
    return x


def make_weights(specs, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape, dtype in specs:
        if dtype.is_floating_point:
            out[name] = trained_like(shape, g).to(dtype)
        else:
            out[name] = torch.randint(0, 1000, shape, generator=g, dtype=dtype)
    return out


def gptq_case_inputs() -> list[torch.Tensor]:
    """Small matrices for the search alone: row lengths 96..1536, three magnitudes (all rows under
    the 1/31 floor, mixed, all above), outliers and ties."""
    g = torch.Generator().manual_seed(11)
    cases = []
    for rows, cols in ((24, 96), (8, 512), (6, 1536), (20, 200)):
        for mult in (0.015625, 1.0, 8.0):
            cases.append(trained_like((rows, cols), g) * mult)
    ties = (torch.randint(-4, 5, (16, 128), generator=g).float() / 4.0) * 3.0
    cases.append(ties)
    return cases


def digest(t: torch.Tensor) -> str:
    flat = t.detach().contiguous().reshape(-1)
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: digest(v) for k, v in tensors.items()}


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURES / "export_golden.pt", weights_only=False)


def check_inputs(golden: dict, case: str, weights: dict[str, torch.Tensor]) -> None:
    if digests(weights) != golden["inputs"][case]:
        pytest.fail(
            f"make_weights no longer reproduces the {case} inputs the fixture was made from "
            "(RNG change?); the record outputs must be regenerated"
        )


class Reports(dict):
    """`ctx.report` records here; `.reports` reads them back like a run's TrainState."""

    @property
    def reports(self) -> dict:
        return self


BASELINE_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "baseline.toml"


def export_recipe(keep=65_536, clip=0.9999984):
    """A recipe whose `[export]` settings are the records' (only those matter here)."""
    recipe = load_recipe(BASELINE_RECIPE)
    recipe.export.keep_float_max_numel, recipe.export.clip_quantile = keep, clip
    return recipe


def run_export(weights, patterns, *, gptq: bool, **int6_cfg):
    """The plan (gptq_lite) and the format (int6_export) as a run's export calls them; returns the
    reports, plan, format label, object and the format's reader."""
    state = Reports()
    ctx = ExportContext(export_recipe(), pattern_roles(weights, patterns), state.__setitem__)
    plan = {name: TensorPlan() for name in weights}
    if gptq:
        gptq_lite.GptqLite(gptq_lite.Config()).pgolf_export_plan(plan=plan, weights=weights, ctx=ctx)
    fmt = int6_export.Int6Export(int6_export.Config(**int6_cfg)).pgolf_export_format(recipe=ctx.recipe)
    obj = fmt.quantize(weights, plan, ctx.roles, ctx.report)
    dtypes = {k: v.dtype for k, v in weights.items()}
    return state, plan, fmt.label, obj, lambda o: fmt.dequantize(o, dtypes)


# ---------------------------------------------------------------- GPTQ-lite search


def test_row_quantiles_equal_torch_quantile():
    g = torch.Generator().manual_seed(0)
    ps = [0.999, 0.9995, 0.9999, 0.99999, 0.9999984, 0.5, 0.0]
    for rows, cols in ((1, 1), (3, 2), (7, 97), (64, 512), (5, 1536), (9, 4099)):
        a = (torch.randn(rows, cols, generator=g) * 0.1).abs()
        a[:, ::7] = a[:, ::7].half().float()  # ties
        for p, got in zip(ps + [1.0], gptq_lite.row_quantiles(a, ps + [1.0]), strict=True):
            want = a.amax(dim=1) if p == 1.0 else torch.quantile(a, p, dim=1)
            assert torch.equal(got, want), (rows, cols, p)


def test_search_equals_record_quantize_int6_per_row(golden):
    cases = gptq_case_inputs()
    assert len(cases) == len(golden["gptq_cases"])
    chosen = set()
    for w, want in zip(cases, golden["gptq_cases"], strict=True):
        p, q, s, _ = gptq_lite.search_matrix(w, gptq_lite.Config().percentiles)
        assert torch.equal(q, want["q"]) and q.dtype == torch.int8
        assert torch.equal(s, want["s"]) and s.dtype == torch.float16
        chosen.add(p)
    assert len(chosen) >= 3  # the cases exercise the search, not one answer


def test_search_picks_the_lowest_error_and_keeps_the_earlier_on_ties():
    w = torch.zeros(4, 80)
    w[:, 0] = 0.5  # every row under the 1/31 floor: all five grids coincide
    p, _, s, errors = gptq_lite.search_matrix(w, [0.999, 0.9995, 0.9999, 0.99999, 1.0])
    assert p == 0.999 and len(set(errors)) == 1 and torch.all(s == torch.tensor(1 / 31, dtype=torch.float16))
    w = trained_like((32, 512), torch.Generator().manual_seed(3)) * 4.0
    p, _, _, errors = gptq_lite.search_matrix(w, [0.999, 0.9995, 0.9999, 0.99999, 1.0])
    assert errors[[0.999, 0.9995, 0.9999, 0.99999, 1.0].index(p)] == min(errors)


# ---------------------------------------------------------------- int6_export: record equivalence


def test_mixed_gptq_equals_record_pr414(golden):
    weights = make_weights(SPECS_414, 414)
    check_inputs(golden, "mixed", weights)
    state, plan, label, obj, deq = run_export(weights, PR414_CONTROL, gptq=True)
    want = golden["mixed"]
    assert label == "int6" and set(obj) == {"w", "m"}  # no format tag, as the record writes it
    assert obj["m"] == want["meta"]
    assert list(obj["w"]) == want["order"]  # same insertion order: same torch.save bytes
    assert digests(obj["w"]) == want["w"]
    assert digests(deq(obj)) == want["dequantized"]
    counts = state.reports["gptq_lite/percentiles"]
    assert sum(counts.values()) == sum(1 for m in want["meta"].values() if m == {"type": "int6"})
    assert state.reports["int6_export/tensors"]["int6_planned"] == sum(counts.values())
    # A plan with percentiles only (no integers) gives the same object; so does row_rule = "plan".
    slim = {k: TensorPlan(clip_percentile=v.clip_percentile) for k, v in plan.items()}
    roles = pattern_roles(weights, PR414_CONTROL)
    obj2, _ = int6_export.quantize(weights, int6_export.Config(row_rule="plan"), roles=roles, plan=slim)
    assert digests(obj2["w"]) == want["w"]


def test_mixed_record_artifact_loads(golden):
    """The records' dequantizer output equals ours on the same object (checked by digest above);
    and our dequantizer restores the live dtypes."""
    weights = make_weights(SPECS_414, 414)
    *_, obj, deq = run_export(weights, PR414_CONTROL, gptq=True)
    out = deq(deserialize(serialize(obj)))
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in weights.items()}
    # read back as `pgolf eval --checkpoint` does: the untagged mixed object goes to int6, a raw
    # state dict passes through, an unknown tag is an error naming what the plugins read
    fmt = int6_export.Int6Export(int6_export.Config()).pgolf_export_format(recipe=export_recipe())
    stack = ExportStack(fmt, [fmt, Int8Format()], [], codec_table(BUILTIN_CODECS))
    dtypes = {k: v.dtype for k, v in weights.items()}
    assert digests(stack.dequantize(deserialize(serialize(obj)), dtypes)) == digests(out)
    assert stack.dequantize(dict(weights), dtypes) == weights
    with pytest.raises(PgolfError, match="artifact format 'other' is not read by the enabled plugins"):
        stack.dequantize({"__quant_format__": "other", "w": {}}, dtypes)


def test_control_fp32_fix_keeps_small_control_tensors_exact():
    """Record quirk: control tensors are small, so the size rule stores them fp16; the fix keeps them fp32."""
    g = torch.Generator().manual_seed(5)
    weights = {
        "blocks.0.attn_scale": 1 + 1e-3 * torch.randn(64, generator=g),  # fp16 rounds 1 + 1e-3 x
        "blocks.0.mlp.fc.weight": torch.randn(512, 256, generator=g) * 0.05,  # above keep_float_max_numel
    }
    for fix, kind in ((False, "passthrough"), (True, "passthrough_ctrl")):
        *_, obj, deq = run_export(weights, PR414_CONTROL, gptq=False, control_fp32=fix)
        assert obj["m"]["blocks.0.attn_scale"] == kind and obj["m"]["blocks.0.mlp.fc.weight"] == {"type": "int6"}
        back = deq(deserialize(serialize(obj)))["blocks.0.attn_scale"]
        exact = torch.equal(back, weights["blocks.0.attn_scale"])
        assert exact == fix and torch.equal(back, weights["blocks.0.attn_scale"].half().float()) != fix


@pytest.mark.parametrize("case,specs,seed", [("all194", SPECS_ALL, 194), ("all63", SPECS_ALL, 63)])
def test_all_scheme_equals_records(golden, case, specs, seed):
    weights = make_weights(specs, seed)
    check_inputs(golden, case, weights)
    state, _, label, obj, deq = run_export(weights, BASELINE_CONTROL, gptq=False, scheme="all", fp16_keep=["tok_emb"])
    want = golden[case]
    assert obj["__quant_format__"] == "int6_in_int8_per_row_v1"
    for key in ("quantized", "scales", "passthrough"):
        assert list(obj[key]) == want["order"][key]
        assert digests(obj[key]) == want[key], key
    for key in ("dtypes", "qmeta", "passthrough_orig_dtypes"):
        assert obj.get(key) == want[key], key
    assert digests(deq(obj)) == want["dequantized"]
    record_obj = dict(obj, __quant_format__=want["format"])  # PR #63's tag reads too
    assert digests(int6_export.dequantize(record_obj)) == want["dequantized"]


def test_rowmax_is_variant_c():
    w = torch.tensor([[0.0, 1.55, -3.1, 0.3], [0.5, -0.2, 0.01, 0.0], [0.0, 0.0, 0.0, 0.0]])
    q, s = int6_export.int6_rowmax(w)
    want_s = torch.tensor([3.1 / 31, 1 / 31, 1 / 31]).to(torch.float16)
    assert torch.equal(s, want_s)
    assert torch.equal(q, torch.round(w / want_s.float()[:, None]).clamp(-32, 31).to(torch.int8))
    assert q.tolist()[0] == [0, 16, -31, 3]
    big = torch.full((2, 70_000), 0.25)
    big[:, 0] = -8.0
    weights = {"blocks.0.mlp.fc.weight": big}
    _, _, _, obj, _ = run_export(weights, (), gptq=False)
    assert obj["m"]["blocks.0.mlp.fc.weight"] == {"type": "int6"}
    assert obj["w"]["blocks.0.mlp.fc.weight.q"].min().item() == -31  # -8 / fp16(8/31) rounds to -31


# ---------------------------------------------------------------- round trip, config, errors


@pytest.mark.parametrize(
    "cfg,gptq", [({}, False), ({}, True), ({"scheme": "all"}, False), ({"scheme": "all", "row_rule": "rowmax"}, False)]
)
def test_round_trip_within_half_a_step(cfg, gptq):
    """Every element no larger than its row's 0.999 quantile (below every clip any rule uses) comes
    back within half a quantization step (plus the fp16 rounding of the stored scale); passthrough
    tensors within fp16 rounding; dtypes restored."""
    weights = make_weights(SPECS_414, 5)
    _, _, _, obj, deq = run_export(weights, PR414_CONTROL, gptq=gptq, **cfg)
    out = deq(deserialize(serialize(obj)))
    assert out.keys() == weights.keys()
    for name, w in weights.items():
        assert out[name].dtype == w.dtype and out[name].shape == w.shape
        if not w.is_floating_point():
            assert torch.equal(out[name], w)
            continue
        w32, err = w.float(), (out[name].float() - w.float()).abs()
        s = obj["w"].get(name + ".scale") if "w" in obj else obj["scales"].get(name)
        if s is None:  # passthrough
            assert (err <= w32.abs() * 2**-10 + 1e-7).all(), name
            continue
        rows = w32.reshape(w32.shape[0], -1) if s.ndim else w32.reshape(1, -1)
        inside = (rows.abs() <= torch.quantile(rows.abs(), 0.999, dim=1, keepdim=True)).reshape(w.shape)
        step = s.float().view(-1, *([1] * (w.ndim - 1))) if s.ndim else s.float()
        # Int8 and Variant A round with the fp32 scale but store it fp16: up to qmax * 2^-11 steps more.
        qmax = 127 if "w" in obj and obj["m"][name] == {"type": "int8"} else 31
        rounding = 0.0 if w.dtype == torch.float32 else 2**-8
        bound = (step * (0.5 + qmax * 2**-11) * (1 + 2**-8) + w32.abs() * rounding + 1e-7).expand_as(w32)
        assert (err[inside] <= bound[inside]).all(), name
        assert inside.float().mean() > 0.97


def test_configs_round_trip_through_toml(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[plugins.int6_export]\nscheme = "all"\nfp16_keep = ["tok_emb"]\nrow_rule = "quantile"\n'
        '[plugins.gptq_lite]\npercentiles = [0.999, 1.0]\ncategories = ["mlp"]\n'
        '[export]\ncompressor = "zstd"\nlevel = 19\n'
    )
    recipe = load_recipe(path)
    again = tmp_path / "again.toml"
    again.write_text(recipe.to_toml())
    recipe2 = load_recipe(again)
    for name in ("int6_export", "gptq_lite"):
        assert recipe2.plugins[name].config == recipe.plugins[name].config
    assert recipe2.plugins["int6_export"].config == int6_export.Config("all", ["mlp", "attn"], "quantile", ["tok_emb"])
    assert (recipe2.export.compressor, recipe2.export.level) == ("zstd", 19)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("int6_export.scheme=int6", r"\[plugins.int6_export\] scheme: expected one of 'mixed', 'all', got 'int6'"),
        ("int6_export.row_rule=max", r"\[plugins.int6_export\] row_rule: expected one of 'auto', .*got 'max'"),
        ('int6_export.int6_categories=["mlps"]', r"\[plugins.int6_export\] int6_categories\[0\]: expected one of"),
        (
            'int6_export.fp16_keep=["tok_emb", ""]',
            r"\[plugins.int6_export\] fp16_keep=\['tok_emb', ''\]: expected non-empty",
        ),
        ('gptq_lite.categories=["mlps"]', r"\[plugins.gptq_lite\] categories\[0\]: expected one of"),
        ("gptq_lite.percentiles=[1.5]", r"\[plugins.gptq_lite\] percentiles=1.5: expected a value in \(0, 1\]"),
        ("gptq_lite.percentiles=[0.0, 1.0]", r"\[plugins.gptq_lite\] percentiles=0.0: expected a value in \(0, 1\]"),
        ("gptq_lite.percentiles=[]", r"\[plugins.gptq_lite\] percentiles=\[\]: expected a non-empty list"),
    ],
)
def test_bad_settings_are_refused_at_recipe_load(setting, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, [f"plugins.{setting}"])


def test_bad_configs_fail_loudly():
    weights = {"blocks.0.mlp.fc.weight": torch.ones(300, 300), "tok_emb.weight": torch.ones(300, 300)}
    with pytest.raises(PgolfError, match="no clip for blocks.0.mlp.fc.weight"):
        run_export(weights, (), gptq=False, row_rule="plan")
    plan = {"tok_emb.weight": TensorPlan(clip_percentile=1.0)}
    with pytest.raises(PgolfError, match="not exported as int6.*tok_emb.weight"):
        int6_export.quantize(weights, int6_export.Config(), roles={}, plan=plan)


# ---------------------------------------------------------------- zstd (built-in codec)

ZSTD = codec_table(BUILTIN_CODECS)["zstd"]
ZLIB = codec_table(BUILTIN_CODECS)["zlib"]


def test_zstd_equals_the_records_compressor():
    import zstandard

    raw = serialize(make_weights(SPECS_414[:6], 1))
    blob = ZSTD.encode(raw, 22)
    # the records' one-shot call `zstandard.ZstdCompressor(level=22).compress(raw)` writes one frame: the zstd
    # magic, the content size in the header, no checksum, nothing after the frame; level 22 (not the default 3)
    assert blob[:4] == b"\x28\xb5\x2f\xfd" == ZSTD.magic
    frame = zstandard.get_frame_parameters(blob)
    assert frame.content_size == len(raw) and not frame.has_checksum
    reader = zstandard.ZstdDecompressor().decompressobj()
    assert reader.decompress(blob) == raw and reader.unused_data == b""
    assert blob == zstandard.ZstdCompressor(level=22).compress(raw) != zstandard.ZstdCompressor(level=3).compress(raw)
    assert ZSTD.decode(blob) == raw


# ---------------------------------------------------------------- each plugin changes the export bytes


def test_each_plugin_changes_the_artifact():
    weights = make_weights([s for s in SPECS_414 if s[0] != "blocks.1.resid_mix"], 7)  # no fp32 giant
    core_obj = Int8Format().quantize(weights, {}, pattern_roles(weights, PR414_CONTROL), lambda k, v: None)
    core = ZLIB.encode(serialize(core_obj), 9)
    *_, rowmax_obj, _ = run_export(weights, PR414_CONTROL, gptq=False)
    *_, gptq_obj, _ = run_export(weights, PR414_CONTROL, gptq=True)
    rowmax_raw, gptq_raw = serialize(rowmax_obj), serialize(gptq_obj)
    with_int6 = ZLIB.encode(rowmax_raw, 9)
    with_gptq = ZLIB.encode(gptq_raw, 9)
    with_zstd = ZSTD.encode(gptq_raw, 22)
    assert len({core, with_int6, with_gptq, with_zstd}) == 4
    assert len(with_int6) < len(core) and len(with_zstd) < len(with_gptq)


# ---------------------------------------------------------------- through the real training loop


def test_tiny_run_exports_int6_gptq_zstd(sample_cache, tmp_path):
    from pgolf_core.run import train

    path = tmp_path / "r.toml"
    path.write_text(
        '[plugins.int6_export]\nrow_rule = "plan"\n[plugins.gptq_lite]\n[export]\ncompressor = "zstd"\nlevel = 22\n'
    )
    recipe = load_recipe(
        path,
        [
            "model.model_dim=64",
            "model.num_heads=4",
            "model.num_kv_heads=2",
            "model.num_layers=2",
            "train.train_seq_len=32",
            "train.train_batch_tokens=256",
            "train.iterations=3",
            "train.warmup_steps=0",
            "train.max_wallclock_seconds=0",
            "train.val_loss_every=0",
            "train.grad_accum_steps=1",
            "eval.max_tokens=1024",
            "eval.batch_tokens=512",
            "export.keep_float_max_numel=4096",
        ],
    )
    summary = train(recipe, tmp_path / "run", interactive=False)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Serialized model int6+zstd" in log and "final_int6_zstd_roundtrip" in log
    assert "gptq_lite/percentiles" in log
    assert abs(summary["roundtrip_val_loss"] - summary["val_loss"]) < 0.05


def test_row_rule_plan_without_a_plan_plugin_is_refused_before_training(tmp_path, capsys):
    """`row_rule = "plan"` needs some plugin's export plan (gptq_lite): without one the run stops at setup
    with exit 2, naming the recipe and the setting, and a finished run in `--out` stays as it was."""
    from pgolf_core.cli import main

    path = tmp_path / "r.toml"
    path.write_text('[plugins.int6_export]\nrow_rule = "plan"\n')
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"finished": true}\n')
    assert main(["run", str(path), "--smoke", "--overwrite", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pgolf: error: {path}: export format int6 needs an export plan")
    assert 'row_rule = "plan"' in err[0] and "pgolf_export_plan" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    assert (out / "summary.json").read_text() == '{"finished": true}\n'
