"""EMA: an exponential moving average of the weights, exported instead of the live weights.

What: an fp32 shadow of every `state_dict()` tensor, taken at the first step's
start (after the warm-up restore, so from the initial weights); after every optimizer step
`ema ← decay·ema + (1 − decay)·w` (w read in fp32; no bias correction, constant decay, horizon
≈ 1/(1 − decay) = 333 steps at 0.997). After training the shadow, cast to each live tensor's dtype
(bf16 embedding tables on GPU, fp32 otherwise), replaces the live weights for the diagnostic eval,
the export and every later eval (`ema/applied` reports the number of updates folded in).
The update is two fused `torch._foreach_*` calls over all tensors, on the model's device.
Why: averages out the noise of the last few hundred steps of the warmdown.
Source: the 2026-03-20 11L_XSA4_EMA record, PR #414 (always on, decay 0.997 hard-coded). Reported: #414
post-EMA pre-quant standard-eval val_bpb 1.1385 / 1.1392 / 1.1389 (three seeds); Δbpb vs no EMA not isolated.
Exclusive with `swa` (both answer `pgolf_final_weights`). #414 also collected Tight-SWA snapshots
but never used them, so its recipe enables `ema` and leaves `swa` disabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeAlias

import torch
from torch import Tensor

from pgolf_core import Order, Plugin, Range, TrainState, hookimpl


@dataclass
class Config:
    decay: Annotated[float, Range(0, 1, open="both")] = 0.997  # 0 would keep the live weights, 1 the init


class EMA(Plugin):
    """Exponential moving average of the weights (fp32 shadow), applied after training."""

    name = "ema"
    version = "0.1.0"
    order = Order.AVERAGE
    conflicts = ("swa",)  # both choose the final weights (pgolf ablate skips such variants)
    Config: TypeAlias = Config
    config: Config
    # `--smoke` trains a few hundred steps: a 333-step horizon would average mostly the init.
    SMOKE = {"decay": 0.95}

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.names: list[str] = []
        self.live: list[Tensor] = []  # the live tensors themselves (Parameters/buffers)
        self.shadow: list[Tensor] | None = None
        self.updates = 0

    @hookimpl
    def pgolf_step_start(self, state: TrainState) -> None:
        if self.shadow is not None:
            return
        live = state.model.state_dict(keep_vars=True)  # keep_vars: survives `param.data = ...`
        self.names, self.live = list(live), list(live.values())
        self.shadow = [t.detach().float().clone() for t in self.live]

    @hookimpl
    def pgolf_post_step(self, state: TrainState) -> None:
        if self.shadow is None:
            return
        decay = self.config.decay
        with torch.no_grad():
            torch._foreach_mul_(self.shadow, decay)
            torch._foreach_add_(self.shadow, self.live, alpha=1.0 - decay)  # bf16 w is read as fp32
        self.updates += 1

    @hookimpl
    def pgolf_final_weights(self, state: TrainState) -> dict[str, Tensor] | None:
        if self.shadow is None:
            return None
        state.report("ema/applied", self.updates)
        return {name: s.to(dtype=t.dtype) for name, s, t in zip(self.names, self.shadow, self.live, strict=True)}
