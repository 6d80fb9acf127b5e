"""Row quantizers shared by every export format (int8, int6) and plan (GPTQ-lite, SDClip).

One integer grid `[-qmin, qmax]` per row (2-D tensors) or per tensor. The variants differ only in
how the clip is chosen and in which dtype the scale is applied, and each record's exact bits depend
on that, so each variant is one function here, parametrised by its maximum integer:

- `clipped_rows` / `clipped_tensor` (baseline int8, int6 of PR #63/#194): clip to a quantile of
  |w|, round with the fp32 scale max(c/qmax, 1/qmax), store the scale fp16 (rows) or fp32 (tensor);
- `scaled_rows` / `max_tensor` (int6 of PR #374/#414/#415): the scale is rounded to fp16 first,
  then q = clamp(round(w / s), -qmin, qmax) with no clipping of w.
"""

from __future__ import annotations

import torch
from torch import Tensor


def category(name: str) -> str:
    """The records' `_classify_param`: embed, mlp, attn or other (checked in that order)."""
    if "tok_emb" in name or "lm_head" in name:
        return "embed"
    if ".mlp." in name:
        return "mlp"
    if ".attn." in name or (".proj." in name and ".mlp." not in name):
        return "attn"
    return "other"


def clipped_rows(t32: Tensor, quantile: float, qmax: int) -> tuple[Tensor, Tensor]:
    """Rows clipped to their `quantile` of |w|; fp32 scale for rounding, fp16 scale stored."""
    clip = torch.quantile(t32.abs(), quantile, dim=1)[:, None]
    scale = (clip / qmax).clamp_min(1.0 / qmax)
    q = torch.round(torch.clamp(t32, -clip, clip) / scale).clamp(-qmax, qmax).to(torch.int8)
    return q.contiguous(), scale.squeeze(1).to(torch.float16).contiguous()


def clipped_tensor(t32: Tensor, quantile: float, qmax: int) -> tuple[Tensor, Tensor]:
    """One fp32 scale. The clip is a Python float and `clip / qmax` is divided in float64 before
    the fp32 cast: that is what makes the scale bit-identical to the records'."""
    clip = float(torch.quantile(t32.abs().flatten(), quantile).item())
    scale = torch.tensor(clip / qmax if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.round(torch.clamp(t32, -clip, clip) / scale).clamp(-qmax, qmax).to(torch.int8)
    return q.contiguous(), scale


def scaled_rows(t32: Tensor, clip: Tensor, qmax: int, qmin: int) -> tuple[Tensor, Tensor]:
    """s = fp16(max(clip_r/qmax, 1/qmax)), q = clamp(round(w / s), -qmin, qmax)."""
    scale = (clip / qmax).clamp_min(1.0 / qmax).to(torch.float16)
    q = torch.clamp(torch.round(t32 / scale.float()[:, None]), -qmin, qmax).to(torch.int8)
    return q, scale


def max_tensor(t32: Tensor, qmax: int, qmin: int) -> tuple[Tensor, Tensor]:
    """One fp16 scale max|w|/qmax (1.0 for an all-zero tensor)."""
    amax = t32.abs().max().item()
    scale = torch.tensor(amax / qmax if amax > 0 else 1.0, dtype=torch.float16)
    return torch.clamp(torch.round(t32 / scale.float()), -qmin, qmax).to(torch.int8), scale


def dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """q * scale, per row (broadcast over trailing dims) or per tensor, cast to `dtype`."""
    s = scale.float()
    return (q.float() * (s.view(-1, *[1] * (q.ndim - 1)) if s.ndim else s)).to(dtype).contiguous()
