"""Depth recurrence: a loop over middle blocks, switched on at a fraction of training.

What: the virtual layer order becomes `0..s-1, [s..e] × (num_loops + 1), e+1..L-1` (PR #1493:
s=3, e=5, two extra passes: 17 virtual layers from 11 blocks); the first half of it (rounded down) is
the U-Net encoder, and the skip weights are sized for the looped order (8 for 17 layers), decoder
position i using weight i. Every pass of a looped block shares all of its weights; nothing is added
per pass. Training starts with the plain order and switches when the elapsed share of the wallclock
cap (of `iterations` without a cap) reaches `start_frac`; the final evals, the export and `pgolf eval`
use the looped order.
Why: more depth for the same bytes; delayed, because early training is cheaper and steadier
shallow. Source: PR #1204 and #1285 (blocks 4,5 looped once, from step 3,000), PR #1412 (blocks 4,5,
two extra passes, at 50 % and 65 % of the wallclock), PR #1493 (the form here: blocks 3..5, two extra
passes, at 35 %). The records' switch is a Python flag that `torch.compile` guards; pgolf's warm-up
compiles both orders, so the switch costs no recompilation in the timed loop.
Reported Δbpb: about −0.003 (PR #1285's README), −0.002 to −0.003 against the best plain depth in
PR #1204. The records reserve 12 s of the cap for GPTQ when computing the fraction; pgolf does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgolf_core import hookimpl


@dataclass
class Config:
    loop_start: int = 3  # first looped block
    loop_end: int = 5  # last looped block (inclusive)
    num_loops: int = 2  # extra passes over [loop_start, loop_end]
    start_frac: float = 0.35  # share of training after which the loop runs


def looped_order(num_layers: int, c: Config) -> list[int]:
    segment = list(range(c.loop_start, c.loop_end + 1))
    return [*range(c.loop_start), *segment * (c.num_loops + 1), *range(c.loop_end + 1, num_layers)]


class DepthRecurrence:
    """Loop blocks loop_start..loop_end num_loops more times once start_frac of training has passed."""

    name = "depth_recurrence"
    version = "0.1.0"
    order = 50
    Config = Config

    @staticmethod
    def validate(config: Config, model=None, recipe=None) -> None:
        last = (model.num_layers if model is not None else config.loop_end + 1) - 1
        if not 0 <= config.loop_start <= config.loop_end <= last:
            raise ValueError(
                f"loop_start={config.loop_start} loop_end={config.loop_end}: "
                f"expected 0 <= loop_start <= loop_end <= {last}"
            )
        if config.num_loops < 1:
            raise ValueError(f"num_loops={config.num_loops}: expected >= 1")
        if not 0.0 <= config.start_frac <= 1.0:
            raise ValueError(f"start_frac={config.start_frac}: expected a fraction in [0, 1]")

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def pgolf_configure(self, run) -> None:
        order = looped_order(run.recipe.model.num_layers, self.config)
        run.log(f"depth_recurrence/order:{','.join(map(str, order))} from:{self.config.start_frac}")

    @hookimpl
    def pgolf_model_built(self, model, spec) -> None:
        model.set_layer_orders([looped_order(spec.num_layers, self.config)])
        model.layer_phase = 1  # a built model (pgolf eval, export) is the looped one; the warm-up resets it

    @hookimpl
    def pgolf_step_start(self, state) -> None:
        cfg = state.recipe.train
        cap_ms = 1000.0 * cfg.max_wallclock_seconds
        frac = state.elapsed_ms / cap_ms if cap_ms > 0 else state.step / max(cfg.iterations, 1)
        phase = int(frac >= self.config.start_frac)
        if phase != state.model.layer_phase:
            state.model.layer_phase = phase
            if phase:
                state.report("depth_recurrence/on_at_step", state.step)

    @hookimpl
    def pgolf_fit_end(self, state) -> None:
        state.model.layer_phase = 1
