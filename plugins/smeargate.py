"""SmearGate: blend each position's embedding with the previous position's.

What: per-dimension gate `g` (zero-init, so σ(g) = 0.5): `x'_t = (1 − σ(g)) ⊙ x_t + σ(g) ⊙ x_{t−1}`,
`x_{−1} = 0` ("v2"). The scalar, input-dependent variant of PR #192 is
selectable (`variant = "scalar"`: `x'_t = x_t + λ·σ(w·x_t)·x_{t−1}`, w and λ zero-init).
Why: a cheap bigram-like signal at the input, applied once (not per layer).
Source: PR #194 (before the embedding RMSNorm, own Adam β=(0.9, 0.99)), PR #297/#414 (after the
RMSNorm, scalar AdamW group). Reported Δbpb: not isolated in any record log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeAlias

import torch
from torch import Tensor, nn

from pgolf_core import ModelSpec, Order, PgolfError, Plugin, Range, Recipe, declare_all, hookimpl


@dataclass
class Config:
    variant: Literal["per_dim", "scalar"] = "per_dim"
    placement: Literal["post_norm", "pre_norm"] = "post_norm"  # post_norm (#297/#414) | pre_norm (#194)
    gate_init: float = 0.0
    # When > 0, the gate gets its own Adam (PR #194: lr 0.02, betas (0.9, 0.99)); else the scalar group.
    own_adam_lr: Annotated[float, Range(0)] = 0.0
    own_adam_beta2: Annotated[float, Range(0, 1, open="high")] = 0.99
    # State-dict name of the per-dim gate: "smear.gate" (#297/#414) or "smear_gate_param" (#194).
    state_key: str = "smear.gate"
    # Name it a control tensor (fp32 passthrough in the int8 exporter, #414's pattern list); #194 did not.
    as_control: bool = True


def shift_right(x: Tensor) -> Tensor:
    """x_{t-1} for every t in the same row, zeros at t = 0."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


class PerDimSmear(nn.Module):
    state_dict_prefix = "smear"

    def __init__(self, dim: int, stage: str, gate_init: float, flat_name: str = "") -> None:
        super().__init__()
        self.stage = stage
        self.param_name = flat_name or "gate"
        self.flat_state_dict = bool(flat_name)  # a top-level key, e.g. PR #194's `smear_gate_param`
        self.register_parameter(self.param_name, nn.Parameter(torch.full((dim,), gate_init, dtype=torch.float32)))

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        gate = getattr(self, self.param_name)
        g = torch.sigmoid(gate.to(dtype=x.dtype))[None, None, :]
        return (1 - g) * x + g * shift_right(x)


class ScalarSmear(nn.Module):
    state_dict_prefix = "smear"

    def __init__(self, dim: int, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self.gate = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.gate.weight)
        self.lam = nn.Parameter(torch.zeros((), dtype=torch.float32))

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        gate = torch.sigmoid(nn.functional.linear(x, self.gate.weight.to(x.dtype)))
        return x + self.lam.to(x.dtype) * gate * shift_right(x)


class SmearGate(Plugin):
    """Gate each position's embedding with the previous one (per-dim or scalar)."""

    name = "smeargate"
    version = "0.1.0"
    order = Order.EMBED_NORMED
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        if not config.state_key:
            raise PgolfError("state_key='': expected a state-dict name such as 'smear.gate'")

    @hookimpl
    def pgolf_embed(self, spec: ModelSpec) -> nn.Module:
        c = self.config
        flat = "" if c.state_key == "smear.gate" else c.state_key
        module = (
            PerDimSmear(spec.model_dim, c.placement, c.gate_init, flat)
            if c.variant == "per_dim"
            else ScalarSmear(spec.model_dim, c.placement)
        )
        own = {"lr": c.own_adam_lr, "betas_2": c.own_adam_beta2, "weight_decay": 0.0} if c.own_adam_lr > 0 else None
        declare_all(module, group="scalar", control=c.as_control, adam=own)  # as_control: the records' "smear" name
        return module
