"""LN scale: multiply block i's two pre-norm outputs by 1/sqrt(i+1).

What: `attn(RMSNorm(x)·s_i)`, `mlp(RMSNorm(x)·s_i)` with `s_i = 1/√(i+1)`.
With QK-norm the factor cancels in q and k, so it scales V (attention output ∝ s_i) and the relu²
MLP output by s_i². No parameters. Why: deeper blocks write smaller updates into the residual
stream at init, which steadies training of the 11-layer stacks. Source: the 2026-03-21
11L_XSA4_EMA_PartialRoPE_LateQAT record, PR #374/#414. Reported Δbpb: not isolated (introduced together with
partial RoPE). It fills the model's static `norm_scale` slot before compilation.
"""

from __future__ import annotations

import math

from pgolf_core import Model, ModelSpec, Order, Plugin, hookimpl


class LnScale(Plugin):
    """Scale block i's normed inputs by 1/sqrt(i+1)."""

    name = "ln_scale"
    version = "0.1.0"
    order = Order.MODEL

    @hookimpl
    def pgolf_model_built(self, model: Model, spec: ModelSpec) -> None:
        for i, block in enumerate(model.blocks):
            # `blocks` is typed as a ModuleList of `Module`s, whose `__setattr__` takes only tensors and modules.
            block.norm_scale = 1.0 / math.sqrt(i + 1)  # type: ignore[assignment]
