"""SWA ("Tight SWA"): the uniform average of weight snapshots taken late in the warmdown.

What: after an optimizer step, when the step's LR scale < `threshold` and the
step index is a multiple of `every`, the `state_dict()` is copied to CPU (first snapshot) or added
to the running sum there, in each tensor's own dtype as the records do (so bf16 embedding tables
are summed in bf16). After training, if more than one snapshot was taken, `sum / count` cast back
to each dtype replaces the live weights (else the live weights stay). Reports `swa/start_step` (the
step index the first snapshot was checked with) and `swa/count`.
`check = "after"` tests the step index after its increment (PR #297/#374/#414); `"before"` tests the
index before it (PR #194). The threshold compares against the LR multiplier, not the training
fraction: PR #194's "SWA over the last 50 %" is the second half of the warmdown.
Why: averaging late checkpoints smooths the weights before quantization.
Sources: PR #194 (every 50, LR scale < 0.5, before; 27-30 snapshots), PR #374 Tight SWA (every 50,
< 0.2, after; 12 snapshots). Δbpb not isolated in the record logs.
PR #414 collected Tight-SWA snapshots every 50 steps but exported the EMA weights only
(its README's "EMA stacks with Tight SWA" is not what the code does), so `recipes/pr414.toml`
leaves `swa` disabled: `ema` and `swa` both answer the exclusive `pgolf_final_weights` hook and
cannot be enabled together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeAlias

from torch import Tensor

from pgolf_core import Order, Plugin, Range, Tiny, TrainState, hookimpl


@dataclass
class Config:
    every: Annotated[int, Range(1)] = 50
    # collect while the LR scale is below this (#374/#414: 0.2, #194: 0.5); an LR scale in (0, 1]
    threshold: Annotated[float, Range(0, 1, open="low")] = 0.2
    # after (#297/#374/#414: the step index after the increment) | before (#194)
    check: Literal["after", "before"] = "after"


class SWA(Plugin):
    """Uniform average of CPU weight snapshots taken every `every` steps late in the warmdown."""

    name = "swa"
    version = "0.1.0"
    order = Order.AVERAGE
    conflicts = ("ema",)  # both choose the final weights (pgolf ablate skips such variants)
    Config: TypeAlias = Config
    config: Config
    # `--smoke`'s warmdown spans ~100 steps, so snapshots every 50 would collect at most one.
    SMOKE = {"every": 5}
    # The tiny run (6 steps, a warmdown over the last 4: LR scales 1, 0.75, 0.5, 0.25) takes 3 snapshots below 0.9;
    # the defaults (every 50 steps, below 0.2) would take none and keep the live weights.
    TINY = Tiny(settings={"every": 1, "threshold": 0.9})

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.total: dict[str, Tensor] | None = None
        self.count = 0

    @hookimpl
    def pgolf_post_step(self, state: TrainState) -> None:
        c = self.config
        index = state.step if c.check == "after" else state.step - 1  # state.step is already incremented
        if not (state.lr_scale < c.threshold and index % c.every == 0):
            return
        if self.total is None:  # (detached copies: no autograd involved)
            self.total = {k: t.detach().cpu().clone() for k, t in state.model.state_dict().items()}
            state.report("swa/start_step", index)
        else:
            for k, t in state.model.state_dict().items():
                self.total[k] += t.detach().cpu()
        self.count += 1

    @hookimpl
    def pgolf_final_weights(self, state: TrainState) -> dict[str, Tensor] | None:
        state.report("swa/count", self.count)
        if self.total is None or self.count <= 1:
            return None
        live = state.model.state_dict()
        return {k: (t / self.count).to(dtype=live[k].dtype) for k, t in self.total.items()}
