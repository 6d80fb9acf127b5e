"""Partial RoPE: rotate only the first `dims` of each head's dimensions, with NTK base scaling.

What: half-split rotary inside the first `dims` (dims 0..dims/2−1 pair with dims/2..dims−1), the
rest pass through; frequencies `base^(−2i/dims)`. When the sequence is longer than the reference
length, `base' = base·(T/ref)^(dims/(dims−2))`.
Record quirk (#374/#414/#415): the reference length is hard-coded to 1024 while training at 2048,
so the NTK branch always fires (effective base ≈ 22,082 for dims 16). `ntk_ref_len = 1024`
reproduces it; `ntk_ref_len = 0` uses the recipe's train_seq_len (the fix: plain base at 2048).
Why: with QK-norm, most head dimensions need no position signal; leaving 48 of 64 dims
unrotated frees them for content matching, and the rotated 16 still order the tokens.
Source: the 2026-03-21 11L_XSA4_EMA_PartialRoPE_LateQAT record, PR #374/#414. Reported Δbpb: not isolated
(introduced together with LN scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeAlias

import torch
from torch import Tensor, nn

from pgolf_core import ModelSpec, Order, PgolfError, Plugin, Range, Recipe, Tiny, hookimpl


@dataclass
class Config:
    dims: Annotated[int, Range(4)] = 16  # even, <= head_dim
    ntk_ref_len: Annotated[int, Range(0)] = 1024  # the records' hard-coded value; 0 = train_seq_len


class PartialRotary(nn.Module):
    """`table_len`: the training length. When it takes the NTK branch (longer than `ref_len`, as in
    #414) its cos/sin are fp32 whatever the model's dtype, so they are computed once here, as the
    record caches them, instead of inside the compiled graph: there Inductor fused cos/sin into the
    q/k kernels and recomputed them per element and again in backward (~2 ms of an 83 ms H100 step).
    A bf16 cast of the buffers rounds them as the record's `.to(bf16)` of its cache (the fp32
    values come from CPU cos/sin here, from CUDA's there: they may differ in the last bit)."""

    inv_freq: Tensor  # buffers (registered in __init__)
    cos_table: Tensor
    sin_table: Tensor

    def __init__(self, head_dim: int, dims: int, base: float, ref_len: int, table_len: int = 0) -> None:
        super().__init__()
        self.dims, self.base, self.ref_len = min(dims, head_dim), base, ref_len
        inv_freq = 1.0 / (base ** (torch.arange(0, self.dims, 2, dtype=torch.float32) / self.dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.table_len = table_len if table_len > ref_len else 0
        if self.table_len:
            cos, sin = self.tables(self.table_len, torch.device("cpu"))
            self.register_buffer("cos_table", cos, persistent=False)
            self.register_buffer("sin_table", sin, persistent=False)

    def frequencies(self, seq_len: int, device: torch.device) -> Tensor:
        if seq_len <= self.ref_len:
            return self.inv_freq.to(device)
        base: float = self.base * ((seq_len / self.ref_len) ** (self.dims / (self.dims - 2)))  # NTK scaling
        return 1.0 / (base ** (torch.arange(0, self.dims, 2, dtype=torch.float32, device=device) / self.dims))

    def rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        rot, rest = x[..., : self.dims], x[..., self.dims :]
        half = self.dims // 2
        x1, x2 = rot[..., :half], rot[..., half:]
        return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos, rest), dim=-1)

    def tables(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        inv_freq = self.frequencies(seq_len, device)
        freqs = torch.outer(torch.arange(seq_len, device=device, dtype=inv_freq.dtype), inv_freq)
        return freqs.cos(), freqs.sin()

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        seq_len = q.size(-2)
        if seq_len == self.table_len:
            cos, sin = self.cos_table, self.sin_table
        else:
            cos, sin = self.tables(seq_len, q.device)
        cos, sin = cos[None, None].to(q.dtype), sin[None, None].to(q.dtype)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)


class PartialRope(Plugin):
    """Rotary embedding on the first `dims` head dimensions (NTK-scaled past the reference length)."""

    name = "partial_rope"
    version = "0.1.0"
    order = Order.MODEL
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config
    TINY = Tiny(settings={"dims": 4})

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        """More rotary dims than the head has is an error, not a silent clamp to the head dim."""
        head_dim = recipe.model.model_dim // recipe.model.num_heads
        if config.dims % 2 or config.dims > head_dim:
            raise PgolfError(
                f"dims={config.dims}: expected an even number >= 4 <= head_dim {head_dim} (model_dim / num_heads)"
            )

    @hookimpl
    def pgolf_rotary(self, spec: ModelSpec, layer: int) -> nn.Module:
        ref = self.config.ntk_ref_len or spec.train_seq_len
        return PartialRotary(spec.head_dim, self.config.dims, spec.rope_base, ref, spec.train_seq_len)
