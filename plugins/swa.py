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

import torch

from pgolf_core import hookimpl


@dataclass
class Config:
    every: int = 50
    threshold: float = 0.2  # collect while the LR scale is below this (#374/#414: 0.2, #194: 0.5)
    check: str = "after"  # after (#297/#374/#414: step index after the increment) | before (#194)


class SWA:
    """Uniform average of CPU weight snapshots taken every `every` steps late in the warmdown."""

    name = "swa"
    version = "0.1.0"
    order = 80
    conflicts = ("ema",)  # both choose the final weights (pgolf ablate skips such variants)
    Config = Config
    # `--smoke`'s warmdown spans ~100 steps, so snapshots every 50 would collect at most one.
    SMOKE = {"every": 5}

    @staticmethod
    def validate(config: Config, model=None, recipe=None) -> None:
        """At recipe load (see pgolf_core.hookspecs)."""
        if config.every < 1:
            raise ValueError(f"swa: every={config.every}: expected >= 1")
        if config.check not in ("after", "before"):
            raise ValueError(f"swa: check={config.check!r}: expected 'after' or 'before'")
        if not 0.0 < config.threshold <= 1.0:
            raise ValueError(f"swa: threshold={config.threshold}: expected an LR scale in (0, 1]")

    def __init__(self, config: Config) -> None:
        self.validate(config)
        self.config = config
        self.total: dict[str, torch.Tensor] | None = None
        self.count = 0

    @hookimpl
    def pgolf_post_step(self, state) -> None:
        c = self.config
        index = state.step if c.check == "after" else state.step - 1  # state.step is already incremented
        if not (state.lr_scale < c.threshold and index % c.every == 0):
            return
        with torch.no_grad():
            if self.total is None:
                self.total = {k: t.detach().cpu().clone() for k, t in state.model.state_dict().items()}
                state.report("swa/start_step", index)
            else:
                for k, t in state.model.state_dict().items():
                    self.total[k] += t.detach().cpu()
        self.count += 1

    @hookimpl
    def pgolf_final_weights(self, state):
        state.report("swa/count", self.count)
        if self.total is None or self.count <= 1:
            return None
        live = state.model.state_dict()
        return {k: (t / self.count).to(dtype=live[k].dtype) for k, t in self.total.items()}
