"""Export: bit-exact equality with the baseline's int8 quantizer, round trip, codecs, atomic
writes and artifact byte accounting.

`tests/fixtures/int8_golden.pt` was generated once from the official `train_gpt.py`: for each
case, its `quantize_state_dict_int8` ran on `make_inputs(case)` (with `INT8_KEEP_FLOAT_MAX_NUMEL`
set to `CASES[case]`), and the file stores, per case, `fingerprint` (of the inputs), `obj` and
`stats` (the baseline's output) and `dequantized` (fingerprints of its `dequantize_state_dict_int8`
output). Inputs are rebuilt from seeds, not stored; their fingerprint tells a changed generator
from a broken quantizer. (At generation time pgolf's object also serialized to the same bytes as
the baseline's, and the baseline's dequantizer read pgolf's object to the same tensors.)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch

from pgolf_core import artifact as export
from pgolf_core.errors import PgolfError

GOLDEN = Path(__file__).parent / "fixtures" / "int8_golden.pt"

# The baseline's defaults, and a small threshold that puts the keep-float boundary on small tensors.
CASES = {"default": 65_536, "small": 4096}


def _outlier_matrix(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    """Rows with max < 1, max > 1, a single huge outlier (the clip quantile matters) and all zeros."""
    w = torch.randn(rows, cols, generator=gen) * 0.02
    w[1] *= 200.0  # max > 1: scale above the 1/127 floor
    w[2, 7] = 9.0  # outlier: clipped just below it by the 0.9999984 quantile
    w[3] = 0.0  # zero row: scale floor 1/127
    w[4, :5] = torch.tensor([1.0, -1.0, 0.5, 127.0 / 254.0, -3.0 / 254.0])  # values on rounding ties
    return w


def make_inputs(case: str) -> dict[str, torch.Tensor]:
    """A deterministic state dict touching every branch of the int8 exporter."""
    gen = torch.Generator().manual_seed(20240317 if case == "default" else 7)
    if case == "default":
        big = _outlier_matrix(gen, 260, 256)  # 66,560 > 65,536: per-row int8
        three_d = (torch.randn(2, 129, 256, generator=gen) * 0.1).to(torch.bfloat16)  # per-tensor, bf16
        zeros = torch.zeros(3, 150, 150)  # per-tensor with clip 0: scale 1.0
    else:
        big = _outlier_matrix(gen, 33, 128)  # 4,224 > 4,096
        three_d = torch.randn(4, 8, 130, generator=gen) * 3.0  # per-tensor, fp32
        zeros = torch.zeros(70, 64)  # per-row, every row on the floor
    sd = {
        "blocks.0.attn.c_q.weight": big,
        "blocks.1.mlp.fc.weight": three_d,
        "blocks.2.attn.c_v.weight": zeros,
        "blocks.0.attn_scale": torch.rand(256, generator=gen) + 0.5,  # control: fp32 passthrough
        "blocks.0.resid_mix": torch.randn(2, 256, generator=gen).to(torch.bfloat16),  # control in bf16 -> fp32
        "skip_weights": torch.randn(4, 32, generator=gen),  # control (no dtype recorded)
        "bigram.scale": (torch.randn(16, 32, generator=gen)).to(torch.bfloat16),  # bf16 -> fp16, dtype recorded
        "ve_shared.scales": torch.randn(64, generator=gen),  # fp32 -> fp16, dtype recorded
        "half.weight": torch.randn(8, 8, generator=gen).half(),  # fp16 stays fp16
        "step": torch.tensor([3, 1, 4], dtype=torch.int64),  # non-float passthrough
        "mask": torch.tensor([True, False]),
    }
    if case == "small":
        sd["at_threshold"] = torch.randn(64, 64, generator=gen)  # exactly 4,096: passthrough
        sd["above_threshold"] = torch.randn(4097, generator=gen)  # 1-D, 4,097: per-tensor
    return sd


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def fingerprint(sd: dict[str, torch.Tensor]) -> str:
    """Hash of names, dtypes, shapes and bytes: detects a changed input generator (or RNG)."""
    h = hashlib.sha256()
    for name, t in sd.items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_bytes(t).numpy().tobytes())
    return h.hexdigest()


def _assert_same(actual: object, expected: object, where: str) -> None:
    """Recursive bit-exact equality of the export object (tensors: dtype, shape and bytes)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(_bytes(actual), _bytes(expected)), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), f"{where}: {list(actual)}"
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}.{key}")
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


@pytest.mark.parametrize("case", list(CASES))
def test_int8_matches_baseline_bit_exactly(golden: dict, case: str) -> None:
    inputs = make_inputs(case)
    assert fingerprint(inputs) == golden[case]["fingerprint"], "input generator changed: regenerate the fixture"
    obj, stats = export.quantize_int8(inputs, keep_float_max_numel=CASES[case], clip_quantile=0.9999984)
    _assert_same(obj, golden[case]["obj"], case)
    assert stats == golden[case]["stats"]


@pytest.mark.parametrize("case", list(CASES))
def test_dequantize_matches_baseline(golden: dict, case: str) -> None:
    """The golden object is the baseline's own: pgolf reads an official artifact to the same bits."""
    out = export.dequantize_int8(golden[case]["obj"])
    assert {k: fingerprint({k: v}) for k, v in out.items()} == golden[case]["dequantized"]


def test_default_clip_constant_gives_same_bits() -> None:
    """0.9999984 and the baseline's 99.99984/100 differ as doubles but not as fp32 quantile fractions."""
    inputs = make_inputs("default")
    a, _ = export.quantize_int8(inputs)
    b, _ = export.quantize_int8(inputs, clip_quantile=0.9999984)
    _assert_same(a, b, "obj")


def test_round_trip_error_within_half_a_step() -> None:
    """|dequantized - clipped| <= s/2 per row, plus |q| times the fp16 storage error of the scale."""
    inputs = make_inputs("small")
    obj, _ = export.quantize_int8(inputs, keep_float_max_numel=4096)
    out = export.dequantize_int8(obj)
    assert sorted(out) == sorted(inputs)  # quantized names first, then passthrough, as the baseline
    for name in obj["passthrough"]:
        w = inputs[name]
        assert out[name].dtype == (torch.float32 if name == "blocks.0.resid_mix" else w.dtype)  # control -> fp32
        if w.is_floating_point():
            assert torch.allclose(out[name].float(), w.float(), rtol=1e-3, atol=0)  # fp16 storage
        else:
            assert torch.equal(out[name], w)
    for name, q in obj["quantized"].items():
        w32 = inputs[name].float()
        assert out[name].dtype == inputs[name].dtype and out[name].shape == w32.shape
        stored = obj["scales"][name].float()
        if w32.ndim == 2:
            clip = torch.quantile(w32.abs(), 0.9999984, dim=1, keepdim=True)
            exact, stored = (clip / 127.0).clamp_min(1 / 127.0), stored[:, None]
        else:
            clip = torch.quantile(w32.abs().flatten(), 0.9999984)
            exact = stored
        bound = exact / 2 + q.float().abs() * (stored - exact).abs() + 1e-6
        err = (out[name].float() - w32.clamp(-clip, clip)).abs()
        assert (err <= bound).all(), name
        assert ((stored - exact).abs() <= exact * 2**-11).all()  # fp16 scale: relative error <= 2^-11


def test_dequantize_rejects_other_formats() -> None:
    with pytest.raises(PgolfError, match="int8_clean_per_row_v1"):
        export.dequantize_int8({"__quant_format__": "int6_in_int8_per_row_v1"})


def test_serialize_round_trip_weights_only() -> None:
    obj, _ = export.quantize_int8(make_inputs("small"), keep_float_max_numel=4096)
    _assert_same(export.deserialize(export.serialize(obj)), obj, "obj")


@pytest.mark.parametrize("codec,level", [("zlib", 9), ("zstd", 22)])
def test_compress_round_trip(codec: str, level: int) -> None:
    raw = export.serialize(export.quantize_int8(make_inputs("small"), keep_float_max_numel=4096)[0])
    blob = export.compress(raw, codec, level)
    assert len(blob) < len(raw)
    assert export.decompress(blob, codec) == raw


def test_zstd_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` raise ImportError
    with pytest.raises(PgolfError, match="pip install zstandard"):
        export.compress(b"abc", "zstd", 22)
    with pytest.raises(PgolfError, match="pip install zstandard"):
        export.decompress(b"abc", "zstd")
    assert export.decompress(export.compress(b"abc", "zlib", 9), "zlib") == b"abc"  # zlib needs nothing


def test_unknown_codec() -> None:
    with pytest.raises(PgolfError, match="zlib, zstd"):
        export.compress(b"abc", "lzma", 6)


def test_write_atomic_replaces_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "final_model.ptz"
    export.write_atomic(path, b"old")
    export.write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        export.write_atomic(path, b"partial")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_artifact_report_counts_the_written_file(tmp_path: Path) -> None:
    obj, _ = export.quantize_int8(make_inputs("small"), keep_float_max_numel=4096)
    blob = export.compress(export.serialize(obj), "zlib", 9)
    model = export.write_atomic(tmp_path / "final_model.int8.ptz", blob)
    code = tmp_path / "train_gpt.py"
    code.write_text("print('héllo')\n", encoding="utf-8")
    report = export.artifact_report(model, [code], limit=len(blob) + 16)
    assert report.model_bytes == model.stat().st_size == len(blob)
    assert report.code_bytes == len("print('héllo')\n".encode()) == 16  # é is two bytes
    assert report.total_bytes == len(blob) + 16 and not report.over_limit
    assert export.artifact_report(model, [code], limit=len(blob) + 15).over_limit
    assert export.artifact_report(model, []).limit == 16_000_000
