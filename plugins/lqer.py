"""LQER: a rank-4 correction of the quantization error of the worst few matrices, stored in 2/4 bits.

What (PR #1797, kept unchanged by #1851): after quantization, for every candidate matrix W (2-D,
float, more than `min_numel` = 65,536 elements: the records' GPTQ'd tensors) the error is
E = W − deq(W) in fp32. The `top_k` = 3 candidates with the largest Frobenius norm ‖E‖ (stable
sort, so ties keep the state-dict order) are corrected: truncated SVD E = U S Vᵀ, r = min(4, len(S)),
A = U[:, :r]·S[:r] (rows × r), B = Vᵀ[:r] (r × cols). "Asymmetric" means A and B get different
grids, not a zero point:
- A: int2, one fp16 scale for the whole matrix, s_A = fp16(max(max|A|, 1e-10) / 1.5),
  q_A = clamp(round(A / s_A), −2, 1) (an asymmetric range: −2 is allowed, +2 is not);
- B: int4 in groups of `group` = 64 consecutive values of B flattened row-major, one fp16 scale
  per group, s_g = fp16(max(max|B_g|, 1e-10) / 7.5), q_B = clamp(round(B_g / s_g), −8, 7).
If r·cols is not a multiple of `group` (or `asym = false`) the records' symmetric fallback is used:
`factor_bits` = 4 → m = 7, one fp16 scale per row of A and per row of B, s = fp16(max(max|row|,
1e-10) / m), q = clamp(round(x / s), −m, m). Integers are stored one per int8 (brotli packs them).
At load: W' = deq(W) + (q_A·s_A) @ (q_B·s_B), summed in fp32 and cast to the dequantized dtype.
Payload: `{name: {"qA", "sA", "qB", "sB"}}` (int8/fp16 tensors; the grid follows from the shapes:
a 0-d `sA` is the asymmetric pair); it survives `torch.save(weights_only=True)`.
Exactness: the records' values when the dequantized weights are fp32 (their CastedLinear matrices;
a bf16 tensor is corrected from its bf16-rounded value instead). The records compute E against their
full-Hessian GPTQ integers (int6 matrices, int7/int8 tok_emb); here against whatever format runs
before (GPTQ-lite int6 in pgolf). A matrix whose error is exactly zero is never a candidate (the
records would divide 0 by a zero fp16 scale).
Why: the rank-4 fix is cheap in bytes, so it goes where the error is largest: on three matrices it
costs ≈30 KB and "recovers ≈0.009 BPB of the int6 quantization tax" (PR #1797 README). #1851's
seed-42 log lists the corrected tensors as `blocks.*.mlp.fc.weight` (int6) and `tok_emb.weight`
(int7). On the tests' integer-draw weights after GPTQ-lite int6 (an almost flat error spectrum, so a
hard case) rank 4 lowers ‖W − W'‖ by 1.4-3.7%.
Source: PR #1797 (`records/track_10min_16mb/2026-04-24_PR1787Base_Smear_LQERAsym_PhasedTTT_1.06157`,
`_lqer_pack_asym`, `gptq_mixed_quantize`, `dequantize_mixed`), the same code in PR #1851
(`2026-04-27_SmearGateBOSFix_PR1787Base_LQERAsym_PhasedTTT`); both credit a PR #1530 "v2" port.
Reported Δbpb: ≈ −0.009 vs int6 alone (#1797 README, not a seeded ablation).
Settings: `rank`, `top_k`, `asym`, `group`, `factor_bits` are the records' LQER_RANK, LQER_TOP_K,
LQER_ASYM_ENABLED, LQER_ASYM_GROUP, LQER_FACTOR_BITS (defaults: their values 4, 3, 1, 64, 4);
`min_numel` and `exclude` pick the candidates (the records: every GPTQ'd tensor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeAlias

import torch
from torch import Tensor

from pgolf_core import Correction, ExportPlan, Order, PgolfError, Plugin, Range, Recipe, Tiny, hookimpl

SCALE_FLOOR = 1e-10


@dataclass
class Config:
    rank: Annotated[int, Range(1)] = 4
    top_k: Annotated[int, Range(1)] = 3  # matrices corrected, the largest ‖W − deq(W)‖ first (none: disable lqer)
    asym: bool = True  # int2 A (one scale) + int4 B (groups); false: the symmetric factor_bits grid
    group: Annotated[int, Range(1)] = 64  # values of B (flattened) per fp16 scale, asymmetric grid
    # symmetric grid (and the fallback when r·cols % group != 0); 2..8: the integers are stored in int8
    factor_bits: Annotated[int, Range(2, 8)] = 4
    min_numel: Annotated[int, Range(0)] = 65_536  # candidates have more elements (the records' GPTQ'd tensors)
    exclude: list[str] = field(default_factory=list)  # name substrings never corrected (none empty: `Lqer.check`)


def quant_error(w: Tensor, deq: Tensor) -> Tensor:
    """E = W − deq(W) in fp32, as the records compute it."""
    return w.detach().float() - deq.detach().float()


def factorize(e: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """A = U[:, :r]·S[:r], B = Vᵀ[:r] of the thin SVD, r = min(rank, len(S)). The SVD runs on one
    thread: its bits then do not depend on the thread count, and threaded LAPACK on a busy machine
    was ~200x slower (1 s instead of 6 ms for a 656 x 100 matrix on two loaded cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        u, s, vh = torch.linalg.svd(e, full_matrices=False)
    finally:
        torch.set_num_threads(threads)
    r = min(rank, s.numel())
    return (u[:, :r] * s[:r]).contiguous(), vh[:r, :].contiguous()


def pack_asym(a: Tensor, b: Tensor, group: int) -> dict[str, Tensor]:
    """int2 A with one fp16 scale (range −2..1), int4 B with an fp16 scale per `group` values (−8..7)."""
    s_a = (a.abs().amax().clamp_min(SCALE_FLOOR) / 1.5).to(torch.float16)
    q_a = torch.clamp(torch.round(a / s_a.float()), -2, 1).to(torch.int8)
    groups = b.reshape(-1, group)
    s_b = (groups.abs().amax(dim=-1, keepdim=True).clamp_min(SCALE_FLOOR) / 7.5).to(torch.float16).reshape(-1)
    q_b = torch.clamp(torch.round(groups / s_b.float().reshape(-1, 1)), -8, 7).to(torch.int8).reshape(b.shape)
    return {"qA": q_a, "sA": s_a, "qB": q_b, "sB": s_b}


def pack_sym(a: Tensor, b: Tensor, bits: int) -> dict[str, Tensor]:
    """Symmetric ±(2^(bits−1) − 1) with one fp16 scale per row of A and per row of B."""
    m = 2 ** (bits - 1) - 1
    s_a = (a.abs().amax(dim=1).clamp_min(SCALE_FLOOR) / m).to(torch.float16)
    s_b = (b.abs().amax(dim=1).clamp_min(SCALE_FLOOR) / m).to(torch.float16)
    q_a = torch.clamp(torch.round(a / s_a.float().view(-1, 1)), -m, m).to(torch.int8)
    q_b = torch.clamp(torch.round(b / s_b.float().view(-1, 1)), -m, m).to(torch.int8)
    return {"qA": q_a, "sA": s_a, "qB": q_b, "sB": s_b}


def factors(entry: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The dequantized factors (A, B) of one payload entry, in fp32."""
    q_a, s_a, q_b, s_b = entry["qA"], entry["sA"], entry["qB"], entry["sB"]
    if s_a.ndim == 0:  # asymmetric: one scale for A, group scales for flattened B
        a = q_a.float() * float(s_a)
        g = q_b.numel() // s_b.numel()
        b = (q_b.reshape(-1, g).float() * s_b.float().view(-1, 1)).reshape(q_b.shape)
        return a, b
    return q_a.float() * s_a.float().view(-1, 1), q_b.float() * s_b.float().view(-1, 1)


def correct(deq: Tensor, entry: dict[str, Tensor]) -> Tensor:
    """deq + A @ B, summed in fp32, in deq's dtype."""
    a, b = factors(entry)
    if a.shape[0] != deq.shape[0] or b.shape[1] != deq.shape[-1] or deq.ndim != 2:
        raise PgolfError(f"lqer: factors {tuple(a.shape)} x {tuple(b.shape)} do not fit a tensor {tuple(deq.shape)}")
    return (deq.float() + a @ b).to(deq.dtype)


class LqerCorrection:
    """The `Correction` (tag "lqer") that `pgolf_export_corrections` contributes."""

    tag = "lqer"

    def __init__(self, config: Config) -> None:
        self.config = config

    def encode(
        self, weights: Mapping[str, Tensor], dequantized: Mapping[str, Tensor], plan: ExportPlan
    ) -> dict[str, dict[str, Tensor]]:
        c = self.config
        errors: dict[str, Tensor] = {}
        for name, w in weights.items():
            deq = dequantized.get(name)
            if deq is None or w.ndim != 2 or not w.is_floating_point() or w.numel() <= c.min_numel:
                continue
            if any(p in name for p in c.exclude):
                continue
            e = quant_error(w, deq)
            if torch.count_nonzero(e):
                errors[name] = e
        payload: dict[str, dict[str, Tensor]] = {}
        # The `top_k` errors with the largest Frobenius norm (a stable sort: ties keep the state-dict order).
        for name in sorted(errors, key=lambda n: -float(errors[n].norm()))[: c.top_k]:
            a, b = factorize(errors[name], c.rank)
            if c.asym and b.numel() % c.group == 0:
                payload[name] = pack_asym(a, b, c.group)
            else:
                payload[name] = pack_sym(a, b, c.factor_bits)
        return payload

    def apply(self, dequantized: dict[str, Tensor], payload: Any) -> dict[str, Tensor]:
        out = dict(dequantized)
        for name, entry in payload.items():
            if name not in out:
                raise PgolfError(f"lqer: the artifact corrects {name}, which the dequantized weights lack")
            out[name] = correct(out[name], entry)
        return out


class Lqer(Plugin):
    """Rank-k quantization-error correction of the top-k matrices (PR #1797 / #1851)."""

    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config  # the base's __init__ stores it
    name = "lqer"
    version = "0.1.0"
    order = Order.EXPORT_CORRECTION  # after the format (int6_export 950), before the codecs (990)
    # Every quantized 32-dim matrix of the tiny run is a candidate (default: > 65,536 elements), and quantized:
    # they are all under the default 65,536-element float-passthrough limit, which the override lowers.
    TINY = Tiny(settings={"min_numel": 256}, overrides=("export.keep_float_max_numel=256",))

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        """What the field types cannot say: no empty name substring in `exclude`."""
        if any(not s for s in config.exclude):
            raise PgolfError(
                f"exclude={config.exclude}: expected non-empty name substrings (an empty one would match every tensor)"
            )

    @hookimpl
    def pgolf_export_corrections(self, recipe: Recipe) -> Correction:
        return LqerCorrection(self.config)
