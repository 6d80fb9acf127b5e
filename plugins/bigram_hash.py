"""BigramHash: a hashed (previous token, token) embedding added to the token embedding.

What: bucket `h_0 = B − 1`, `h_i = ((36313·t_i) XOR (27191·t_{i−1})) mod (B − 1)` (int32); table
E ∈ R^{B×k} zero-init, projection k→d, scalar `scale` (init 0.05); `scale · P(E[h])` is added to
the token embedding before the embedding RMSNorm (v2).
Why: bigram statistics for the price of a small table. Source: PR #297 (4096×128), PR #374/#414
(2048×128). The projection is zeroed here and overwritten by `ortho_init` when that plugin is on
(as in the records). Reported Δbpb: not isolated in any record log.
Groups: E → token group, P → Muon, scale → scalar group (name contains "bigram.scale").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeAlias, cast

import torch
from torch import Tensor, nn

from pgolf_core import ModelSpec, Order, Plugin, Range, Tiny, declare_role, hookimpl


@dataclass
class Config:
    buckets: Annotated[int, Range(2)] = 2048
    dim: Annotated[int, Range(1)] = 128
    scale_init: float = 0.05


def bigram_buckets(tokens: Tensor, buckets: int) -> Tensor:
    t = tokens.to(torch.int32)
    mod = buckets - 1
    rest = torch.bitwise_xor(36313 * t[..., 1:], 27191 * t[..., :-1]) % mod
    first = torch.full_like(t[..., :1], mod)
    return torch.cat([first, rest], dim=-1).long()


class BigramHashEmbedding(nn.Module):
    state_dict_prefix = "bigram"
    stage = "pre_norm"

    def __init__(self, spec: ModelSpec, c: Config) -> None:
        super().__init__()
        self.buckets = c.buckets
        self.embed = nn.Embedding(c.buckets, c.dim)
        nn.init.zeros_(self.embed.weight)
        # spec.linear: the model's linear slot, so a QAT plugin's layer class reaches this projection too.
        self.proj = spec.linear("bigram.proj", c.dim, spec.model_dim) if c.dim != spec.model_dim else None
        if self.proj is not None:
            nn.init.zeros_(cast(Tensor, self.proj.weight))
        self.scale = nn.Parameter(torch.tensor(c.scale_init, dtype=torch.float32))

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        h: Tensor = self.embed(bigram_buckets(input_ids, self.buckets))
        if self.proj is not None:
            h = self.proj(h)
        return x + h * self.scale.to(dtype=h.dtype)


class BigramHash(Plugin):
    """Hashed bigram embedding added before the embedding norm."""

    name = "bigram_hash"
    version = "0.1.0"
    order = Order.EMBED_RAW
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config
    TINY = Tiny(settings={"buckets": 64, "dim": 16})

    @hookimpl
    def pgolf_embed(self, spec: ModelSpec) -> nn.Module:
        module = BigramHashEmbedding(spec, self.config)
        declare_role(module.embed, "weight", group="token")
        if module.proj is not None:
            declare_role(module.proj, "weight", group="matrix")
        declare_role(module, "scale", group="scalar", control=True)  # records: "bigram.scale" is a control name
        return module
