"""The baseline's int8 export format, the default `pgolf_export_format`.

`quantize_int8` produces exactly the object of the baseline's `quantize_state_dict_int8`
(same keys, dtypes and values), so an official `final_model.int8.ptz` loads
through `dequantize_int8` and a pgolf artifact loads through the baseline's dequantizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from pgolf_core import quant
from pgolf_core.exporter import FORMAT_KEY
from pgolf_core.roles import is_control
from pgolf_core.types import ExportPlan, PgolfError, Roles

INT8_FORMAT = "int8_clean_per_row_v1"
# The baseline writes the clip quantile as 99.99984 / 100 (= 0.9999984000000001); torch.quantile
# works in the tensor's dtype, where it equals 0.9999984, so either spelling gives the same bits.
DEFAULT_CLIP_QUANTILE = 99.99984 / 100.0


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- int8 per-row quantization (baseline)


def quantize_int8(
    state_dict: Mapping[str, Tensor],
    *,
    keep_float_max_numel: int = 65_536,
    clip_quantile: float = DEFAULT_CLIP_QUANTILE,
    roles: Roles,
) -> dict[str, Any]:
    """The baseline's int8 export object (its size stats, which the baseline only logs, are not computed).

    Non-float tensors pass through unchanged; float tensors with at most `keep_float_max_numel`
    elements pass through (as commented below); the rest are quantized per row (2-D) or per tensor.
    """
    obj: dict[str, Any] = {FORMAT_KEY: INT8_FORMAT, "quantized": {}, "scales": {}, "dtypes": {}, "passthrough": {}}
    qmeta: dict[str, dict[str, Any]] = {}  # optional keys, added after these only when non-empty, like the baseline
    orig_dtypes: dict[str, str] = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        if not t.is_floating_point() or t.numel() <= keep_float_max_numel:
            # small float tensors pass through: control tensors as fp32; fp32/bf16 others as fp16 with
            # their dtype recorded so loading restores it (fp16 and other float dtypes stay as they are)
            if t.is_floating_point() and is_control(name, roles):
                t = t.float().contiguous()
            elif t.dtype in (torch.float32, torch.bfloat16):
                orig_dtypes[name] = _dtype_name(t.dtype)
                t = t.to(torch.float16).contiguous()
            obj["passthrough"][name] = t
            continue
        if t.ndim == 2:
            q, s = quant.clipped_rows(t.float(), clip_quantile, 127)
            qmeta[name] = {"scheme": "per_row", "axis": 0}
        else:
            q, s = quant.clipped_tensor(t.float(), clip_quantile, 127)
        obj["quantized"][name], obj["scales"][name], obj["dtypes"][name] = q, s, _dtype_name(t.dtype)
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


def dequantize_int8(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """Weights back from an int8 object (pgolf's or an official artifact's): `q * scale` per row
    (broadcast over trailing dims) or per tensor, cast to the recorded dtype."""
    if obj.get("__quant_format__") != INT8_FORMAT:
        raise PgolfError(f"not an {INT8_FORMAT} object (format tag {obj.get('__quant_format__')!r})")
    orig_dtypes = obj.get("passthrough_orig_dtypes", {})
    out = {
        n: quant.dequantize(q, obj["scales"][n], getattr(torch, obj["dtypes"][n])) for n, q in obj["quantized"].items()
    }
    for name, t in obj["passthrough"].items():
        t = t.detach().to("cpu").contiguous()
        out[name] = t.to(getattr(torch, orig_dtypes[name])).contiguous() if name in orig_dtypes else t
    return out


class Int8Format:
    """The default export format: the baseline's int8 per-row object (`[export]` keep_float_max_numel
    and clip_quantile)."""

    label = "int8"
    tags: tuple[str, ...] = (INT8_FORMAT,)
    needs_plan = ""

    def __init__(self, keep_float_max_numel: int = 65_536, clip_quantile: float = DEFAULT_CLIP_QUANTILE) -> None:
        self.settings: dict[str, Any] = {"keep_float_max_numel": keep_float_max_numel, "clip_quantile": clip_quantile}

    def quantize(
        self, weights: Mapping[str, Tensor], plan: ExportPlan, roles: Roles, report: Callable[[str, Any], None]
    ) -> dict[str, Any]:
        planned = [name for name, entry in plan.items() if entry.clip_percentile is not None or entry.q is not None]
        if planned:  # e.g. gptq_lite with int6_export ablated: say so instead of dropping it silently
            report("int8/export_plan_ignored", len(planned))
        return quantize_int8(weights, roles=roles, **self.settings)

    def dequantize(self, obj: Mapping[str, Any], dtypes: Mapping[str, torch.dtype]) -> dict[str, Tensor]:
        return dequantize_int8(obj)
