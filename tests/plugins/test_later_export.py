"""lqer, brotli and lzma against the later records' own outputs (tests/fixtures/export_later_golden.pt,
made by tools/make_export_goldens.py from PR #1797/#1851, #1089/#1204 and #549/#1019)."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import sys
from pathlib import Path

import pytest
import torch
from pgolf_plugins import brotli as brotli_plugin
from pgolf_plugins import lqer
from pgolf_plugins import lzma as lzma_plugin

from pgolf_core.registry import load_recipe
from pgolf_core.types import PgolfError, RecipeError
from tests.plugins import golden as golden_helpers

FIXTURE = Path(__file__).parents[1] / "fixtures" / "export_later_golden.pt"
LQER_SEED = 1797
LQER_SHAPES = {  # the records' LQER candidates are their GPTQ'd tensors: float, more than 65,536 elements
    "tok_emb.weight": (264, 256),
    "blocks.0.attn.c_q.weight": (256, 320),
    "blocks.0.attn_scale": (256,),
    "blocks.0.mlp.fc.weight": (320, 256),
    "blocks.0.mlp.proj.weight": (256, 320),
    "blocks.1.attn.proj.weight": (656, 100),  # r * 100 is not a multiple of 64: the symmetric fallback
}
ROW_STEP = 16  # the fixture keeps every 16th row of the record's corrected matrices
# |corrected| < 0.5 here, so one fp32 ulp is <= 3e-8; a different BLAS may sum the rank-r product in
# another order (a few ulps). Observed difference from the record: 0 (native, avx2, default dispatch,
# OMP_NUM_THREADS=1); the test also passes at 1e-7.
CORRECTED_ATOL = 1e-6
SVD_ATOL = 1e-5  # see test_lqer_own_svd_gives_the_records_low_rank_error


def lqer_weights() -> dict[str, torch.Tensor]:
    """Integer-draw weights: the same bits on every CPU (tests/plugins/golden.py)."""
    return golden_helpers.randomize({k: torch.zeros(s) for k, s in LQER_SHAPES.items()}, LQER_SEED)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def liblzma_version() -> str:
    """The liblzma the lzma module most likely uses ("" if it cannot be asked)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("lzma") or "liblzma.so.5")
        lib.lzma_version_string.restype = ctypes.c_char_p
        return lib.lzma_version_string().decode()
    except (OSError, AttributeError):
        return ""


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def as_bytes(t: torch.Tensor) -> bytes:
    return t.numpy().tobytes()


# ------------------------------------------------------------------ LQER


def record_dequantized(golden: dict) -> dict[str, torch.Tensor]:
    """The record's GPTQ weights q * s (fp32), and its fp16 passthrough tensors read back as fp32."""
    quant, meta = golden["lqer"]["quantized"], golden["lqer"]["quantized_meta"]
    out = {}
    for name, kind in meta.items():
        if kind.startswith("passthrough"):
            out[name] = quant[name].float()
        else:
            out[name] = quant[name + ".q"].float() * quant[name + ".scale"].float().view(-1, 1)
    return out


def config_of(hparams: dict) -> lqer.Config:
    return lqer.Config(
        rank=hparams["lqer_rank"],
        top_k=hparams["lqer_top_k"],
        asym=hparams["lqer_asym_enabled"],
        group=hparams["lqer_asym_group"],
        factor_bits=hparams["lqer_factor_bits"],
    )


def test_lqer_inputs_are_reproduced(golden):
    weights = lqer_weights()
    if {k: digest(v) for k, v in weights.items()} != golden["lqer"]["inputs"]:
        pytest.fail("lqer_weights no longer reproduces the fixture's inputs (RNG change?); regenerate the fixture")


CASES = ["default", "all_top5", "sym_rank2_bits5", "rank8_group32"]


def record_svd(rec: dict):
    """`torch.linalg.svd` answering with the record's own singular vectors (stored by the generator)
    for the record's error matrices, recognised by their bits; any other input fails the test."""
    by_error = {entry["E"]: entry for entry in rec["svd"].values()}

    def svd(e: torch.Tensor, full_matrices: bool = True):
        assert not full_matrices
        entry = by_error.get(digest(e))
        assert entry is not None, "lqer factorized a matrix the record did not (or its error bits differ)"
        return entry["U"], entry["S"], entry["Vh"]

    return svd


@pytest.mark.parametrize("case", CASES)
def test_lqer_matches_record(golden, case, monkeypatch):
    """Selection, packing and correction bit for bit, given the record's SVD: the SVD itself is
    LAPACK's and rounds differently with the thread count or build (one ulp can move an fp16 scale)."""
    rec = golden["lqer"]["cases"][case]
    weights, deq = lqer_weights(), record_dequantized(golden)
    correction = lqer.LqerCorrection(config_of(rec["hparams"]))
    monkeypatch.setattr(torch.linalg, "svd", record_svd(rec))
    payload = correction.encode(weights, deq, {})
    monkeypatch.undo()
    # the record appends its factors in the order of the selection (largest error first)
    chosen = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in rec["factors"]))
    assert list(payload) == chosen
    assert sorted(chosen) == sorted(k for k, m in rec["meta"].items() if "+lqer" in m)
    for name, entry in payload.items():
        suffix = "_a" if rec["meta"][name].endswith("+lqer_asym") else ""
        assert (entry["sA"].ndim == 0) == bool(suffix), name
        for ours, theirs in (("qA", "lqA"), ("sA", "lqAs"), ("qB", "lqB"), ("sB", "lqBs")):
            want = rec["factors"][f"{name}.{theirs}{suffix}"]
            got = entry[ours]
            assert got.dtype == want.dtype and got.shape == want.shape, (name, ours)
            assert torch.equal(got, want), (name, ours)
    out = correction.apply(deq, payload)
    for name, t in out.items():
        if name in payload:
            want = rec["corrected_rows"][name]
            assert t.dtype == torch.float32
            assert torch.allclose(t[::ROW_STEP], want, rtol=0, atol=CORRECTED_ATOL), name
            assert not torch.equal(t, deq[name])
        else:
            assert torch.equal(t, deq[name]), name


def test_lqer_own_svd_gives_the_records_low_rank_error(golden):
    """With this machine's SVD: the same rank-r approximation A @ B of each error (the product does
    not depend on the signs LAPACK picks). |E| < 0.06 and |A @ B| < 0.05 here; the errors' spectra are
    nearly flat, so the truncated product moves with LAPACK's rounding: lqer's one-thread SVD differs
    from the record's (two threads, when the fixture was made) by 5.4e-7 at most, under native, avx2
    and default dispatch, so SVD_ATOL = 1e-5 leaves 18x. A wrong rank or a missing S moves it by ~1e-2.
    One SVD per matrix (rank 8), cut to each case's rank: the same singular vectors the record slices."""
    weights, deq = lqer_weights(), record_dequantized(golden)
    ours: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for rec in golden["lqer"]["cases"].values():
        r = rec["hparams"]["lqer_rank"]
        for name, entry in rec["svd"].items():
            if name not in ours:
                e = lqer.quant_error(weights[name], deq[name])
                assert digest(e) == entry["E"], name  # the record's error, bit for bit
                ours[name] = lqer.factorize(e, 8)
            a, b = ours[name]
            want = (entry["U"] * entry["S"]) @ entry["Vh"]
            assert torch.allclose(a[:, :r] @ b[:r], want, rtol=0, atol=SVD_ATOL), name


def test_lqer_default_corrects_the_three_largest_errors(golden):
    weights, deq = lqer_weights(), record_dequantized(golden)
    payload = lqer.LqerCorrection(lqer.Config()).encode(weights, deq, {})
    norms = {k: float((weights[k] - deq[k]).norm()) for k in weights if weights[k].ndim == 2}
    assert list(payload) == sorted(norms, key=lambda k: -norms[k])[:3]


def gptq_lite_dequantized(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from pgolf_plugins import gptq_lite

    out = {}
    for name, w in weights.items():
        if w.ndim == 2:
            _, q, s, _ = gptq_lite.search_matrix(w, gptq_lite.Config().percentiles)
            out[name] = q.float() * s.float()[:, None]
        else:
            out[name] = w.clone()
    return out


@pytest.mark.parametrize(
    "config", [lqer.Config(top_k=5), lqer.Config(top_k=5, asym=False, rank=2)], ids=["asym_rank4", "sym_rank2"]
)
def test_lqer_lowers_the_error_of_every_corrected_matrix(config):
    weights = lqer_weights()
    deq = gptq_lite_dequantized(weights)
    correction = lqer.LqerCorrection(config)
    payload = correction.encode(weights, deq, {})
    assert len(payload) == 5
    out = correction.apply(deq, payload)
    for name in payload:
        before, after = float((weights[name] - deq[name]).norm()), float((weights[name] - out[name]).norm())
        assert after < before, (name, before, after)


def test_lqer_payload_survives_weights_only_save():
    weights = lqer_weights()
    deq = gptq_lite_dequantized(weights)
    correction = lqer.LqerCorrection(lqer.Config())
    payload = correction.encode(weights, deq, {})
    buf = io.BytesIO()
    torch.save({"__corrections__": {"lqer": payload}}, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["__corrections__"]["lqer"]
    assert list(loaded) == list(payload)
    again, direct = correction.apply(deq, loaded), correction.apply(deq, payload)
    assert all(torch.equal(again[k], direct[k]) for k in direct)


def test_lqer_skips_exact_small_and_excluded_tensors():
    g = torch.Generator().manual_seed(0)
    w = {n: torch.randint(-64, 65, (300, 256), generator=g).float() / 64 for n in ("a", "b", "c", "d")}
    w["small"] = torch.randint(-64, 65, (256, 256), generator=g).float() / 64  # 65,536: not more
    deq = {n: (t * 4).round() / 4 for n, t in w.items()}
    deq["b"] = w["b"].clone()  # quantized exactly: no candidate
    payload = lqer.LqerCorrection(lqer.Config(top_k=5, exclude=["c"])).encode(w, deq, {})
    assert sorted(payload) == ["a", "d"]


def test_lqer_corrects_in_fp32_and_keeps_the_dtype():
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-64, 65, (300, 256), generator=g).float() / 256
    deq = ((w * 8).round() / 8).to(torch.bfloat16)
    correction = lqer.LqerCorrection(lqer.Config(top_k=1))
    payload = correction.encode({"w": w}, {"w": deq}, {})
    a, b = lqer.factors(payload["w"])
    out = correction.apply({"w": deq}, payload)["w"]
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (deq.float() + a @ b).to(torch.bfloat16))


def test_lqer_rejects_factors_that_do_not_fit():
    entry = lqer.pack_asym(torch.ones(4, 2), torch.ones(2, 64), 64)
    with pytest.raises(PgolfError, match="do not fit"):
        lqer.correct(torch.zeros(5, 64), entry)
    with pytest.raises(PgolfError, match="dequantized weights lack"):
        lqer.LqerCorrection(lqer.Config()).apply({}, {"x": entry})


@pytest.mark.parametrize(
    "bad, message",
    [
        ("rank=0", "rank=0: expected >= 1"),
        ("top_k=0", "top_k=0: expected >= 1"),
        ("group=0", "group=0: expected >= 1"),
        ("factor_bits=1", r"factor_bits=1: expected a value in \[2, 8\]"),
        ("factor_bits=9", r"factor_bits=9: expected a value in \[2, 8\]"),
        ("min_numel=-1", "min_numel=-1: expected >= 0"),
        ('exclude=["c", ""]', "exclude=.*: expected non-empty name substrings"),
    ],
)
def test_lqer_config_errors(bad, message):
    with pytest.raises(RecipeError, match=r"\[plugins.lqer\] " + message):
        load_recipe(None, [f"plugins.lqer.{bad}"])


# ------------------------------------------------------------------ brotli (byte shuffle + brotli-11)

SHUFFLE_RECORDS = {"brotli": 1, "brotli1204": 2}  # fixture entry -> header bytes (PR #1089, PR #1204)


@pytest.mark.parametrize("record, header", SHUFFLE_RECORDS.items())
def test_shuffle_matches_record(golden, record, header):
    rec = golden[record]
    assert rec["stride"] == 2
    for case, entry in rec["cases"].items():
        raw, shuffled = as_bytes(entry["raw"]), as_bytes(entry["shuffled"])
        assert brotli_plugin.shuffle(raw, 2, header) == shuffled, case
        assert brotli_plugin.unshuffle(shuffled, 2, header) == raw, case


@pytest.mark.parametrize("record, header", SHUFFLE_RECORDS.items())
def test_brotli_matches_record(golden, record, header):
    brotli = pytest.importorskip("brotli")
    codec = brotli_plugin.make_codec(2, header)
    same_library = golden["provenance"]["brotli"] == brotli.__version__
    for case, entry in golden[record]["cases"].items():
        raw, blob = as_bytes(entry["raw"]), as_bytes(entry["blob"])
        assert codec.decode(blob) == raw, case  # the record's artifact reads back here
        if same_library:  # brotli's encoder output may change between releases
            assert codec.encode(raw, 11) == blob, case


@pytest.mark.parametrize("header", [1, 2])
@pytest.mark.parametrize("stride", [2, 3, 4])
def test_brotli_round_trip(header, stride):
    pytest.importorskip("brotli")
    codec = brotli_plugin.make_codec(stride, header)
    g = torch.Generator().manual_seed(stride)
    for n in [0, 1, 2, 3, 5, 8, 9, 1000, 4099]:
        raw = bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())
        for level in (1, 11):
            assert codec.decode(codec.encode(raw, level)) == raw, (n, level)
        assert brotli_plugin.unshuffle(brotli_plugin.shuffle(raw, stride, header), stride, header) == raw


def test_brotli_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "brotli", None)  # `import brotli` now raises ImportError
    codec = brotli_plugin.make_codec()
    for call in (lambda: codec.encode(b"abc", 11), lambda: codec.decode(b"abc")):
        with pytest.raises(PgolfError) as info:
            call()
        assert str(info.value) == 'codec "brotli" needs the brotli package: pip install brotli'


def test_brotli_rejects_what_it_did_not_write():
    brotli = pytest.importorskip("brotli")
    codec = brotli_plugin.make_codec()
    with pytest.raises(PgolfError, match="lacks the byte-shuffle header"):
        codec.decode(brotli.compress(b"PK\x03\x04 plain torch.save bytes", quality=11))
    with pytest.raises(PgolfError, match="not a brotli stream"):
        codec.decode(b"\xfd7zXZ\x00 not brotli")
    with pytest.raises(PgolfError, match="level=12"):
        codec.encode(b"abc", 12)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("header_bytes=3", r"header_bytes=3: expected a value in \[1, 2\]"),
        ("header_bytes=0", r"header_bytes=0: expected a value in \[1, 2\]"),
        ("stride=1", r"stride=1: expected a value in \[2, 255\]"),
        ("stride=256", r"stride=256: expected a value in \[2, 255\]"),
    ],
)
def test_brotli_config_errors(bad, message):
    with pytest.raises(RecipeError, match=r"\[plugins.brotli\] " + message):
        load_recipe(None, [f"plugins.brotli.{bad}"])


def test_brotli_missing_package_is_found_at_recipe_load(monkeypatch):
    monkeypatch.setitem(sys.modules, "brotli", None)  # `import brotli` now raises ImportError
    with pytest.raises(RecipeError, match=r'\[plugins.brotli\] export.compressor="brotli": codec "brotli" needs the'):
        load_recipe(None, ["export.compressor=brotli", "export.level=11"], enable=["brotli"])
    load_recipe(None, [], enable=["brotli"])  # not the recipe's codec: nothing to load


# ------------------------------------------------------------------ lzma (.xz)

LZMA_RECORDS = {"lzma": 6, "lzma1019": 9}  # fixture entry -> the record's preset (PR #549, PR #1019)


@pytest.mark.parametrize("record, preset", LZMA_RECORDS.items())
def test_lzma_matches_record(golden, record, preset):
    assert f"preset={preset}" in golden[record]["statements"]
    codec = lzma_plugin.CODEC
    same_library = golden["provenance"]["liblzma"] == liblzma_version() != ""
    for case, entry in golden[record]["cases"].items():
        raw, blob = as_bytes(entry["raw"]), as_bytes(entry["blob"])
        assert blob.startswith(codec.magic) and codec.magic == b"\xfd7zXZ\x00"
        assert codec.decode(blob) == raw, case
        if same_library:  # the .xz bytes are liblzma's
            assert codec.encode(raw, preset) == blob, case


def test_lzma_round_trip_and_errors():
    codec = lzma_plugin.CODEC
    g = torch.Generator().manual_seed(549)
    for n in [0, 1, 7, 4096]:
        raw = bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())
        for level in (0, 6, 9):
            assert codec.decode(codec.encode(raw, level)) == raw
    with pytest.raises(PgolfError, match="magic"):
        codec.decode(b"PK\x03\x04")
    with pytest.raises(PgolfError, match="corrupt"):
        codec.decode(codec.magic + b"\x00" * 20)
    with pytest.raises(PgolfError, match="level=10"):
        codec.encode(b"", 10)


# ------------------------------------------------------------------ through the core's export stack


@pytest.mark.parametrize("codec_name", ["brotli", "lzma"])
def test_lqer_and_codecs_round_trip_through_an_artifact(codec_name):
    """Writer and reader of pgolf_core.exporter: the payload is saved under `__corrections__`, read
    back with `weights_only=True` and applied again, so the reader sees the writer's weights."""
    from pgolf_core import ExportContext, Recipe
    from pgolf_core.exporter import ExportStack, Int8Format, TensorPlan, deserialize, serialize

    if codec_name == "brotli":
        pytest.importorskip("brotli")
    codec = brotli_plugin.make_codec() if codec_name == "brotli" else lzma_plugin.CODEC
    weights = lqer_weights()
    dtypes = {k: v.dtype for k, v in weights.items()}
    fmt = Int8Format(65_536, 0.9999984)
    stack = ExportStack(fmt, [fmt], [lqer.LqerCorrection(lqer.Config())], {codec.name: codec})
    ctx = ExportContext(Recipe(), {}, lambda key, value: None)
    obj = stack.quantize(weights, {k: TensorPlan() for k in weights}, ctx)
    payload = obj["__corrections__"]["lqer"]
    assert len(payload) == 3
    plain = fmt.dequantize(obj, dtypes)
    blob = codec.encode(serialize(obj), 11 if codec_name == "brotli" else 9)
    back = stack.dequantize(deserialize(stack.decode(blob, codec.name)), dtypes)
    written = lqer.LqerCorrection(lqer.Config()).apply(plain, payload)
    for name, t in back.items():
        assert torch.equal(t, written[name]), name
        if name in payload:
            assert float((weights[name] - t).norm()) < float((weights[name] - plain[name]).norm())
