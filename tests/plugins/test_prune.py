"""prune against PR #415's own pruning statements (tests/fixtures/prune_golden.pt, made by
tools/make_prune_goldens.py: the record's `if args.prune_pct > 0:` block of `main()` run on `make_inputs()`,
rebuilt here from integer draws and checked against the digests the fixture stores), the live model untouched
by an export, and the settings' validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from pgolf_plugins import prune

from pgolf_core import TensorPlan, build_model
from pgolf_core.exporter import ExportContext
from pgolf_core.registry import load_recipe, plugin_parts
from pgolf_core.run import export_artifact, load_checkpoint
from pgolf_core.types import RecipeError
from tests.tiny import tiny

FIXTURE = Path(__file__).parents[1] / "fixtures" / "prune_golden.pt"
INPUT_SEED = 4153
FRACTIONS = (0.01, 0.25)  # the record's PRUNE_PCT and a larger one (through the record's environment variable)
# bf16 case: a = 1.5 * 2^-8 and the next bf16 value b = a + 2^-15; 400 magnitudes below a, 420 equal to a, the
# rest >= b, so the record's 1 % quantile (rank fp32(0.01) * 81,919 = 819.19) is a + 0.19 (b - a), which bf16
# rounds to a: `|w| < bf16(t)` keeps the 420 entries equal to a (an fp32 comparison would zero them).
BF16_A, BF16_STEP, BF16_BELOW, BF16_AT = 1.5 * 2.0**-8, 2.0**-15, 400, 420


def make_inputs() -> dict[str, torch.Tensor]:
    """The fixture's state dict, from integer draws and exact arithmetic (the same bits on every CPU)."""
    g = torch.Generator().manual_seed(INPUT_SEED)

    def draw(shape, lo: int, hi: int) -> torch.Tensor:
        return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64)

    def signs(shape) -> torch.Tensor:
        return (draw(shape, 0, 2) * 2 - 1).float()

    out: dict[str, torch.Tensor] = {}
    # just over the limit (65,537 > 65,536): multiples of 2^-16, with 16 negative zeros (pruned to +0.0)
    a = draw((1, 65537), -(2**16), 2**16 + 1).float() * 2.0**-16
    a[0, ::4099] = -0.0
    out["blocks.0.mlp.fc.weight"] = a
    # exactly at the limit: untouched (the record's `numel() > 65536` is strict), like PR #415's bigram.proj
    out["bigram.proj.weight"] = draw((256, 256), -4096, 4097).float() * 2.0**-12
    # ties: magnitudes k/128, k uniform in 1..200 (0.5 % each): the quantile lands on a tie, and `<` keeps it
    out["blocks.0.attn.c_q.weight"] = draw((320, 256), 1, 201).float() / 128 * signs((320, 256))
    # a bf16 table (tok_emb on the GPU): the threshold between two adjacent bf16 values (see BF16_A)
    n = 320 * 256
    below = draw((BF16_BELOW,), 1, 128) * BF16_STEP  # nonzero, <= a - 2^-15 after the bf16 rounding: stays < a
    rest = BF16_A + BF16_STEP + draw((n - BF16_BELOW - BF16_AT,), 0, 2**12) * 2.0**-16  # >= b after rounding
    mags = torch.cat([below.float(), torch.full((BF16_AT,), BF16_A), rest.float()])
    order = torch.argsort(draw((n,), 0, 2**62), stable=True)  # a permutation (distinct keys: one answer)
    out["tok_emb.weight"] = (mags[order] * signs((n,))).reshape(320, 256).to(torch.bfloat16)
    # over the limit but not 2-D: untouched
    out["blocks.0.mlp_scale"] = draw((70000,), -512, 513).float() * 2.0**-9
    out["banked.weight"] = draw((2, 200, 200), -512, 513).float() * 2.0**-9
    # 2-D, small: untouched
    out["blocks.0.resid_mix"] = draw((2, 512), -512, 513).float() * 2.0**-9
    return out


def digest(t: torch.Tensor) -> str:
    """sha256 of the tensor's bytes (dtype-exact: a sign bit or a bf16 rounding changes it)."""
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def pack(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as packed bits (uint8), flattened."""
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy()))


def unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.numpy())[:n].astype(bool)).reshape(shape)


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURE, weights_only=True)


class Reports(dict):
    pass


def plan_export(weights: dict, config: prune.Config) -> tuple[dict, Reports]:
    """The plugin's export-plan hook as a run's export calls it; returns the export's weights dict."""
    reports = Reports()
    ctx = ExportContext(load_recipe(None, []), {}, reports.__setitem__)
    plan = {name: TensorPlan() for name in weights}
    prune.Prune(config).pgolf_export_plan(plan=plan, weights=weights, ctx=ctx)
    return weights, reports


def test_the_inputs_are_the_records():
    inputs = make_inputs()
    gold = torch.load(FIXTURE, weights_only=True)
    assert list(inputs) == list(gold["inputs"])
    for name, t in inputs.items():
        assert (digest(t), str(t.dtype), list(t.shape)) == tuple(gold["inputs"][name]), name


def test_defaults_are_the_records(golden):
    assert prune.Config().fraction == golden["default_prune_pct"] == 0.01
    assert prune.Config().min_numel == 65536


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_pruning_equals_the_record_bit_for_bit(golden, fraction):
    inputs = make_inputs()
    run = golden["runs"][str(fraction)]
    weights, reports = plan_export(dict(inputs), prune.Config(fraction=fraction))
    for name, t in weights.items():
        assert t.dtype == inputs[name].dtype and t.shape == inputs[name].shape, name
        assert digest(t) == run["outputs"][name], name
        assert digest(inputs[name].masked_fill(unpack(run["zeroed"][name], t.shape), 0.0)) == digest(t), name
    masks = {n: unpack(b, inputs[n].shape) for n, b in run["zeroed"].items()}
    assert run["zeroed_count"] == sum(int(m.sum()) for m in masks.values())  # changed bits (-0.0 -> +0.0 too)
    assert reports["prune/zeroed"] == sum(int((m & (inputs[n] != 0)).sum()) for n, m in masks.items()) > 0
    pruned = [n for n, t in inputs.items() if digest(weights[n]) != digest(t)]
    assert pruned == ["blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight", "tok_emb.weight"]
    thresholds = [prune.prune(inputs[n], fraction)[2] for n in pruned]
    assert all(torch.equal(a, b) for a, b in zip(thresholds, run["thresholds"], strict=True))


def test_the_golden_tells_the_records_comparisons_apart(golden):
    """The fixture would catch `<=` for `<`, an fp32 comparison of the bf16 table, or a lost -0.0 sign."""
    inputs, run = make_inputs(), golden["runs"]["0.01"]
    ties, table = inputs["blocks.0.attn.c_q.weight"], inputs["tok_emb.weight"]
    t_ties = torch.quantile(ties.abs().float().reshape(-1), 0.01)
    assert (ties.abs() < t_ties).sum() < (ties.abs() <= t_ties).sum()
    assert int(unpack(run["zeroed"]["blocks.0.attn.c_q.weight"], (-1,)).sum()) == int((ties.abs() < t_ties).sum())
    t_table = torch.quantile(table.abs().float().reshape(-1), 0.01)
    zeroed = int(unpack(run["zeroed"]["tok_emb.weight"], (-1,)).sum())
    assert zeroed == BF16_BELOW == int((table.abs() < t_table).sum())
    assert int((table.float().abs() < t_table).sum()) == BF16_BELOW + BF16_AT  # what an fp32 comparison zeroes
    fc = prune.prune(inputs["blocks.0.mlp.fc.weight"], 0.01)[0]
    assert not torch.signbit(fc[0, ::4099]).any() and torch.signbit(inputs["blocks.0.mlp.fc.weight"][0, ::4099]).all()


def test_quantile_over_torchs_size_limit_is_torchs(monkeypatch):
    """Tensors over 2^24 entries (torch.quantile's limit) take the quantile from kthvalue: the same bits."""
    inputs = make_inputs()
    for q in (0.0, 0.01, 0.25, 0.999):
        for name in ("blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight", "tok_emb.weight"):
            a = inputs[name].abs().float()
            expected = torch.quantile(a.reshape(-1), q)
            monkeypatch.setattr(prune, "QUANTILE_MAX_NUMEL", 0)
            got = prune.whole_quantile(a, q)
            monkeypatch.setattr(prune, "QUANTILE_MAX_NUMEL", 2**24)
            assert got.shape == expected.shape and torch.equal(got, expected), (name, q)


def test_fraction_zero_and_the_size_limit():
    inputs = make_inputs()
    weights, reports = plan_export(dict(inputs), prune.Config(fraction=0.0))
    assert all(weights[n] is t for n, t in inputs.items()) and reports["prune/zeroed"] == 0
    weights, reports = plan_export(dict(inputs), prune.Config(min_numel=65537))  # the 65,537-entry one is not above
    assert weights["blocks.0.mlp.fc.weight"] is inputs["blocks.0.mlp.fc.weight"]
    assert weights["tok_emb.weight"] is not inputs["tok_emb.weight"] and reports["prune/zeroed"] > 0


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("fraction", 1.0, "fraction=1.0: expected a value in [0, 1)"),
        ("fraction", -0.01, "fraction=-0.01: expected a value in [0, 1)"),
        ("min_numel", -1, "min_numel=-1: expected >= 0"),
    ],
)
def test_settings_are_validated(key, value, message):
    escaped = message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(RecipeError, match=r"\[plugins\.prune\] " + escaped):
        load_recipe(None, [f"plugins.prune.{key}={value}"])
    for ok in (0.0, 0.5, 0.999):
        assert load_recipe(None, [f"plugins.prune.fraction={ok}"]).plugins["prune"].config.fraction == ok


def test_export_leaves_the_live_model_untouched_and_changes_the_artifact(tmp_path):
    """An export with prune (on CPU the export's weights share storage with the model) leaves every tensor of
    the model as it was; its artifact is the unpruned export of the pruned weights, and its round trip differs
    from the unpruned one's exactly at the pruned entries' quantized values."""
    small = [*tiny(), "export.keep_float_max_numel=256", 'export.compressor="zlib"', "export.level=9"]
    recipes = {"with": load_recipe(None, [*small, "plugins.prune.min_numel=256"]), "without": load_recipe(None, small)}
    model = build_model(recipes["without"])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # |w| in [1/2, 1]: the smallest entries are far from 0 on the int8 grid (rowmax/127)
        for p in model.parameters():
            sign = torch.randint(0, 2, p.shape, generator=g) * 2 - 1
            p.copy_(torch.randint(1024, 2049, p.shape, generator=g) / 2048 * sign)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dtypes = {k: v.dtype for k, v in before.items()}
    quiet = {"log": lambda msg: None}
    got = {name: export_artifact(r, model, tmp_path / name, **quiet) for name, r in recipes.items()}
    assert all(digest(before[k]) == digest(v) for k, v in model.state_dict().items())
    pruned_by_hand = build_model(recipes["without"])
    config = prune.Config(min_numel=256)
    by_hand = {k: prune.prune(v, config.fraction)[0] if prune.Prune(config).wanted(v) else v for k, v in before.items()}
    pruned_by_hand.load_state_dict(by_hand)
    hand = export_artifact(recipes["without"], pruned_by_hand, tmp_path / "by_hand", **quiet)
    assert Path(hand["path"]).read_bytes() == Path(got["with"]["path"]).read_bytes()
    assert got["with"]["reports"]["prune/zeroed"] > 0 and "prune/zeroed" not in got["without"]["reports"]
    trips = {
        name: load_checkpoint(got[name]["path"], plugin_parts(r).export, dtypes, "zlib") for name, r in recipes.items()
    }
    changed = sorted(k for k in dtypes if not torch.equal(trips["with"][k], trips["without"][k]))
    assert changed == sorted(k for k, v in before.items() if v.ndim == 2 and v.numel() > 256)
