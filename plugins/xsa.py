"""XSA (exclusive self attention) on the last N layers.

What: after attention, remove from each head's output its component along the token's own
(normalized) value vector: `y ← y − (y·v̂) v̂`, with v̂ from the KV head serving that query head.
GQA-aware through a [B, T, Hkv, H/Hkv, D] view, no repeat_interleave.
Why: stops a token from attending to itself as a shortcut. Source: the 2026-03-20 11L_EfficientPartialXSA
record (last 3), the 2026-03-20 11L_XSA4_EMA record/#374/#414 (last 4). No parameters. Reported Δbpb: not
isolated in the #414 log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeAlias

import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core import ModelSpec, Order, PgolfError, Plugin, Range, Recipe, Tiny, hookimpl


@dataclass
class Config:
    last_n: Annotated[int, Range(0)] = 4  # <= model.num_layers


class ExclusiveSelfAttention(nn.Module):
    def forward(self, y: Tensor, v: Tensor, x: Tensor) -> Tensor:
        b, t, h, d = y.shape
        hkv = v.size(-2)
        grouped = y.reshape(b, t, hkv, h // hkv, d)
        v_hat = F.normalize(v, dim=-1).unsqueeze(-2)
        return (grouped - (grouped * v_hat).sum(dim=-1, keepdim=True) * v_hat).reshape(b, t, h, d)


class XSA(Plugin):
    """Exclusive self attention on the last `last_n` blocks."""

    name = "xsa"
    version = "0.1.0"
    order = Order.MODEL
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config
    TINY = Tiny(settings={"last_n": 2})

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        if config.last_n > (top := recipe.model.num_layers):
            raise PgolfError(f"last_n={config.last_n}: expected 0..{top} (model.num_layers)")

    @hookimpl
    def pgolf_attention_post(self, spec: ModelSpec, layer: int) -> nn.Module | None:
        return ExclusiveSelfAttention() if layer >= spec.num_layers - self.config.last_n else None
