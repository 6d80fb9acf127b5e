"""Artifact export: the baseline's int8 format, compression, atomic writes and byte accounting.

`quantize_int8` produces exactly the object of the baseline's `quantize_state_dict_int8`
(same keys, dtypes and values), so an official `final_model.int8.ptz` loads
through `dequantize_int8` and a pgolf artifact loads through the baseline's dequantizer.
The artifact counted by the challenge is the compressed model file plus the code (T13).
"""

from __future__ import annotations

import io
import os
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pgolf_core.errors import PgolfError
from pgolf_core.recipe import BASELINE_CONTROL_PATTERNS
from pgolf_core.rundir import WriteFault

INT8_FORMAT = "int8_clean_per_row_v1"
# The baseline writes the clip quantile as 99.99984 / 100 (= 0.9999984000000001); torch.quantile
# works in the tensor's dtype, where it equals 0.9999984, so either spelling gives the same bits.
DEFAULT_CLIP_QUANTILE = 99.99984 / 100.0
CODECS = ("zlib", "zstd")
ARTIFACT_LIMIT_BYTES = 16_000_000  # decimal bytes, not MiB (T13)
STATS_KEYS = (
    "param_count", "num_tensors", "num_float_tensors", "num_nonfloat_tensors", "baseline_tensor_bytes",
    "int8_payload_bytes",
)  # fmt: skip


def _nbytes(t: Tensor) -> int:
    return int(t.numel()) * int(t.element_size())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- int8 per-row quantization (T09)


def quantize_rows(t32: Tensor, clip_quantile: float) -> tuple[Tensor, Tensor]:
    """2-D: one scale per row, which tracks output-channel ranges better than one per tensor.

    Each row is clipped to its `clip_quantile` of |w|; the scale floor 1/127 means rows with a
    clip value below 1 share the fixed grid of step 1/127. Scales are stored fp16 but the
    rounding uses the fp32 scale, as the baseline does.
    """
    clip = torch.quantile(t32.abs(), clip_quantile, dim=1)[:, None]
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)
    q = torch.round(torch.clamp(t32, -clip, clip) / scale).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.squeeze(1).to(torch.float16).contiguous()


def quantize_tensor(t32: Tensor, clip_quantile: float) -> tuple[Tensor, Tensor]:
    """Other ranks: one fp32 scalar scale. The clip is a Python float and `clip / 127` is divided
    in float64 before the fp32 cast: that is what makes the scale bit-identical to the baseline's."""
    clip = float(torch.quantile(t32.abs().flatten(), clip_quantile).item())
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.round(torch.clamp(t32, -clip, clip) / scale).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def _keep_float(name: str, t: Tensor, control_patterns: Iterable[str], orig_dtypes: dict[str, str]) -> Tensor:
    """Small float tensors pass through: control tensors as fp32; fp32/bf16 others as fp16 with
    their dtype recorded so loading restores it (fp16 and other float dtypes stay as they are)."""
    if any(p in name for p in control_patterns):
        return t.float().contiguous()
    if t.dtype in (torch.float32, torch.bfloat16):
        orig_dtypes[name] = _dtype_name(t.dtype)
        return t.to(torch.float16).contiguous()
    return t


def quantize_int8(
    state_dict: Mapping[str, Tensor],
    *,
    keep_float_max_numel: int = 65_536,
    clip_quantile: float = DEFAULT_CLIP_QUANTILE,
    control_patterns: Iterable[str] = tuple(BASELINE_CONTROL_PATTERNS),
) -> tuple[dict[str, Any], dict[str, int]]:
    """The baseline's int8 export object and its size stats.

    Non-float tensors pass through unchanged; float tensors with at most `keep_float_max_numel`
    elements pass through (see `_keep_float`); the rest are quantized per row (2-D) or per tensor.
    """
    patterns = tuple(control_patterns)
    quantized: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    dtypes: dict[str, str] = {}
    passthrough: dict[str, Tensor] = {}
    orig_dtypes: dict[str, str] = {}
    qmeta: dict[str, dict[str, Any]] = {}
    stats = dict.fromkeys(STATS_KEYS, 0)
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        stats["param_count"] += int(t.numel())
        stats["num_tensors"] += 1
        stats["baseline_tensor_bytes"] += _nbytes(t)
        if not t.is_floating_point() or t.numel() <= keep_float_max_numel:
            stats["num_nonfloat_tensors"] += int(not t.is_floating_point())
            kept = _keep_float(name, t, patterns, orig_dtypes) if t.is_floating_point() else t
            passthrough[name] = kept
            stats["int8_payload_bytes"] += _nbytes(kept)
            continue
        stats["num_float_tensors"] += 1
        q, s = quantize_rows(t.float(), clip_quantile) if t.ndim == 2 else quantize_tensor(t.float(), clip_quantile)
        if s.ndim > 0:
            qmeta[name] = {"scheme": "per_row", "axis": 0}
        quantized[name], scales[name], dtypes[name] = q, s, _dtype_name(t.dtype)
        stats["int8_payload_bytes"] += _nbytes(q) + _nbytes(s)
    obj: dict[str, Any] = {
        "__quant_format__": INT8_FORMAT,
        "quantized": quantized,
        "scales": scales,
        "dtypes": dtypes,
        "passthrough": passthrough,
    }
    if qmeta:  # optional keys, present only when non-empty, like the baseline
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj, stats


def dequantize_int8(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """Weights back from an int8 object (pgolf's or an official artifact's): `q * scale` per row
    (broadcast over trailing dims) or per tensor, cast to the recorded dtype."""
    if obj.get("__quant_format__") != INT8_FORMAT:
        raise PgolfError(f"not an {INT8_FORMAT} object (format tag {obj.get('__quant_format__')!r})")
    qmeta = obj.get("qmeta", {})
    orig_dtypes = obj.get("passthrough_orig_dtypes", {})
    out: dict[str, Tensor] = {}
    for name, q in obj["quantized"].items():
        dtype = getattr(torch, obj["dtypes"][name])
        s = obj["scales"][name]
        if qmeta.get(name, {}).get("scheme") == "per_row" or s.ndim > 0:
            s = s.to(torch.float32).view(q.shape[0], *([1] * (q.ndim - 1)))
            out[name] = (q.float() * s).to(dtype).contiguous()
        else:
            out[name] = (q.float() * float(s.item())).to(dtype).contiguous()
    for name, t in obj["passthrough"].items():
        t = t.detach().to("cpu").contiguous()
        out[name] = t.to(getattr(torch, orig_dtypes[name])).contiguous() if name in orig_dtypes else t
    return out


# ---------------------------------------------------------------- bytes: serialize, compress, write (T13)


def serialize(obj: Any) -> bytes:
    """`torch.save` into memory: the bytes the compressor sees, as in every record."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def deserialize(raw: bytes) -> Any:
    """`torch.load` with `weights_only=True`: an artifact holds only tensors, dicts and strings,
    so nothing in a downloaded file gets to run code."""
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def _zstandard() -> Any:
    """The zstandard module, or a clear error: never a silent fallback to zlib, because the reader
    must use the codec the writer used and the artifact size depends on it."""
    try:
        import zstandard
    except ImportError as exc:
        raise PgolfError('codec "zstd" needs the zstandard package: pip install zstandard') from exc
    return zstandard


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise PgolfError(f'unknown compressor "{codec}" (choose one of {", ".join(CODECS)})')


def require_codec(codec: str) -> None:
    """Fail when a run starts, not at export after the training, if the codec cannot be used."""
    _check_codec(codec)
    if codec == "zstd":
        _zstandard()


def compress(raw: bytes, codec: str, level: int) -> bytes:
    """zlib (baseline: level 9) or zstd (records: level 22)."""
    _check_codec(codec)
    if codec == "zlib":
        return zlib.compress(raw, level)
    return _zstandard().ZstdCompressor(level=level).compress(raw)


def decompress(blob: bytes, codec: str) -> bytes:
    _check_codec(codec)
    if codec == "zlib":
        return zlib.decompress(blob)
    return _zstandard().ZstdDecompressor().decompress(blob)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same directory, fsync, then `os.replace`: a crash leaves
    either the old file or the complete new one, never a partial artifact."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a run's files from other users
    except OSError as exc:
        raise WriteFault(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFault):
            raise WriteFault(path, exc) from exc
        raise
    return path


__all__ = [
    "ARTIFACT_LIMIT_BYTES", "CODECS", "DEFAULT_CLIP_QUANTILE", "INT8_FORMAT", "compress", "decompress",
    "dequantize_int8", "require_codec", "deserialize", "quantize_int8", "quantize_rows", "quantize_tensor", "serialize",
    "write_atomic",
]  # fmt: skip
