"""LeakyReLU(0.5)²: the MLP activation `leaky_relu(fc(x), negative_slope)²` instead of relu².

What: each block's MLP computes `proj(leaky_relu(fc(x), negative_slope=0.5).square())` (PR #549's
`MLP.forward`: `F.leaky_relu(F.linear(x, up_w), negative_slope=0.5)`, squared, then the down
projection; there the weights come from parameter banks, here from the block's own `fc`/`proj`).
Nothing else changes: the layers are built through `spec.linear` as the default relu² MLP builds them
(same state-dict keys, same random init, QAT reaches them), `proj` is zero-initialised, and the
hidden width is the recipe's `mlp_mult · model_dim`.
Why: relu² zeroes the gradient of every negative pre-activation, so units that go negative stop
learning ("dead" neurons). With slope 0.5 the negative side still carries gradient, and squaring
keeps the output non-negative, so the relu² bias (sparse-ish, positive features) stays.
Source: PR #549 (activation from PR #493 and #518). Reported Δbpb: −0.0021 (post-TTT, seed 1337,
1.1204 → 1.1183 in the PR's ablation on top of the #414 base with TTT and BigramHash 3072).
Settings: `negative_slope` (0.5, the record's; 0.0 gives back relu²).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeAlias

import torch.nn.functional as F
from torch import Tensor, nn

from pgolf_core import ModelSpec, Order, Plugin, Range, declare_role, hookimpl


@dataclass
class Config:
    negative_slope: Annotated[float, Range(0, 1, open="high")] = 0.5  # PR #549; 0.0 is relu²


class LeakyReLU2MLP(nn.Module):
    """`proj(leaky_relu(fc(x), slope)²)`; `fc` then `proj` from `spec.linear`, as the default MLP."""

    def __init__(self, spec: ModelSpec, negative_slope: float) -> None:
        super().__init__()
        self.fc = spec.linear("mlp.fc", spec.model_dim, spec.mlp_hidden)
        self.proj = spec.linear("mlp.proj", spec.mlp_hidden, spec.model_dim)
        declare_role(self.proj, "weight", zero_init=True)
        self.negative_slope = float(negative_slope)  # a Python constant: compiled into the graph

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.proj(F.leaky_relu(self.fc(x), negative_slope=self.negative_slope).square())
        return out


class LeakyReLU2(Plugin):
    """LeakyReLU(0.5)² MLP activation (PR #549)."""

    name = "leaky_relu2"
    version = "0.1.0"
    order = Order.MODEL
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config

    @hookimpl
    def pgolf_mlp(self, spec: ModelSpec, layer: int) -> nn.Module:
        return LeakyReLU2MLP(spec, self.config.negative_slope)
