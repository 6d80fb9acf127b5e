"""Magnitude pruning before quantization: zero the smallest-|w| fraction of every large matrix.

What (PR #415, the `if args.prune_pct > 0:` block of `main()`): for every tensor of the export's
weights that is 2-D and has more than `min_numel` entries (the record's `v.ndim == 2 and v.numel() >
65536`: the block matrices, tok_emb, bigram.embed, ve_shared.embed; bigram.proj, 128 x 512 = 65,536
exactly, is left alone), t = torch.quantile(|w| in fp32, `fraction`) over the whole flattened tensor
(linear interpolation), and every entry with |w| < t (strictly) becomes 0. The comparison is the
record's `w.abs() < t` in the tensor's own dtype: for a bf16 table (the embeddings on the GPU) torch
rounds t to bf16 first, so entries equal to that rounded value stay. No name is excluded; 1-D and
other tensors are untouched. It runs on the final weights (SWA's), after the raw `final_model.pt` is
written and the final-weights eval has run (both see the unpruned weights, as in the record), and
before every other export-plan plugin (gptq_lite's clip search, SDClip) and the format, which all
see the pruned weights as the record's quantizer does. The pruned tensors are new ones that replace
entries of the export's own `weights` dict; the live model's weights are never modified.
Tensors of more than 2^24 entries (torch.quantile's limit, not reached by the record) take the same
quantile from two `kthvalue` calls, with torch.quantile's fp32 rank and `lerp`.
Why: zeros compress well after quantization, and the smallest weights carry the least signal. The
effect is small: on a rowmax int6 grid (step max|w_r| / 31) most of these entries round to 0 anyway.
Source: PR #415 (PRUNE_PCT = 0.01). Reported Δbpb: not isolated ("Magnitude pruning 1%" among the
record's changes).
Reports `prune/zeroed`: how many nonzero entries it zeroed, over all pruned tensors.
Settings: `fraction` (the quantile, in [0, 1); 0 turns it off, as PRUNE_PCT = 0), `min_numel` (a 2-D
tensor is pruned when it has more entries than this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeAlias

import torch
from torch import Tensor

from pgolf_core import ExportContext, ExportPlan, Order, Plugin, Range, Tiny, hookimpl

QUANTILE_MAX_NUMEL = 2**24  # torch.quantile refuses larger inputs


@dataclass
class Config:
    fraction: Annotated[float, Range(0, 1, open="high")] = 0.01  # PR #415 PRUNE_PCT (a quantile; 0 turns it off)
    min_numel: Annotated[int, Range(0)] = 65536  # PR #415: `v.numel() > 65536`


def whole_quantile(a: Tensor, q: float) -> Tensor:
    """`torch.quantile(a, q)` over all entries (linear interpolation, fp32 0-d result); for inputs over
    torch.quantile's size limit the same value from `kthvalue`: rank = fp32(q) * (n - 1), the values at
    floor(rank) and ceil(rank), `lerp` by rank - floor(rank), as torch.quantile computes it."""
    flat = a.reshape(-1)
    if flat.numel() <= QUANTILE_MAX_NUMEL:
        return torch.quantile(flat, q)
    rank = torch.tensor([q], dtype=flat.dtype) * (flat.numel() - 1)
    below, above = int(rank.long().item()), int(rank.ceil().long().item())
    lo = torch.kthvalue(flat, below + 1).values.reshape(1)
    hi = torch.kthvalue(flat, above + 1).values.reshape(1)
    return torch.lerp(lo, hi, rank - rank.long()).reshape(())


def prune(w: Tensor, fraction: float) -> tuple[Tensor, int, Tensor]:
    """(a new tensor with the entries |w| < quantile(|w|, fraction) set to +0.0, how many of them were not
    zero before, the threshold)."""
    thresh = whole_quantile(w.abs().float(), fraction)
    mask = w.abs() < thresh  # in w's dtype, as the record (a bf16 w compares against bf16(thresh))
    return w.masked_fill(mask, 0.0), int((mask & (w != 0)).sum().item()), thresh


class Prune(Plugin):
    """Zero the `fraction` smallest-|w| entries of each large 2-D tensor before export (PR #415)."""

    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config  # the base's __init__ stores it
    name = "prune"
    version = "0.1.0"
    order = Order.EXPORT_EDIT  # before the plans that read the weights (gptq_lite, sdclip: 900) and the format
    # The tiny run prunes its 32-dim matrices and the embedding (more than 256 entries) by 5 % (the record's 1 %
    # moves the loss by 9.1e-5 only: int6 rounds most of those entries to 0 anyway); int6_export, enabled in both
    # runs, quantizes them once the float-passthrough limit (default: 65,536 elements) is lowered.
    TINY = Tiny(
        settings={"min_numel": 256, "fraction": 0.05},
        partners=("int6_export",),
        overrides=("export.keep_float_max_numel=256",),
    )

    def wanted(self, w: Tensor) -> bool:
        return w.is_floating_point() and w.ndim == 2 and w.numel() > self.config.min_numel

    @hookimpl
    def pgolf_export_plan(self, plan: ExportPlan, weights: dict[str, Tensor], ctx: ExportContext) -> None:
        zeroed = 0
        if self.config.fraction > 0:  # the record's `if args.prune_pct > 0:`
            for name in list(weights):
                if self.wanted(weights[name]):
                    weights[name], n, _ = prune(weights[name], self.config.fraction)
                    zeroed += n
        ctx.report("prune/zeroed", zeroed)
