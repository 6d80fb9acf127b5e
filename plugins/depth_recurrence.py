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
from typing import Annotated, TypeAlias

from pgolf_core import Model, ModelSpec, Order, PgolfError, Plugin, Range, Recipe, Tiny, TrainState, hookimpl


@dataclass
class Config:
    loop_start: Annotated[int, Range(0)] = 3  # first looped block
    loop_end: Annotated[int, Range(0)] = 5  # last looped block (inclusive; loop_start..model.num_layers - 1)
    num_loops: Annotated[int, Range(1)] = 2  # extra passes over [loop_start, loop_end]
    start_frac: Annotated[float, Range(0, 1)] = 0.35  # share of training after which the loop runs


def looped_order(num_layers: int, c: Config) -> list[int]:
    segment = list(range(c.loop_start, c.loop_end + 1))
    return [*range(c.loop_start), *segment * (c.num_loops + 1), *range(c.loop_end + 1, num_layers)]


class DepthRecurrence(Plugin):
    """Loop blocks loop_start..loop_end num_loops more times once start_frac of training has passed."""

    name = "depth_recurrence"
    version = "0.1.0"
    order = Order.MODEL
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config
    TINY = Tiny(settings={"loop_start": 1, "loop_end": 2, "num_loops": 1, "start_frac": 0.5})

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        last = recipe.model.num_layers - 1
        if not 0 <= config.loop_start <= config.loop_end <= last:
            raise PgolfError(
                f"loop_start={config.loop_start} loop_end={config.loop_end}: "
                f"expected 0 <= loop_start <= loop_end <= {last}"
            )

    @hookimpl
    def pgolf_model_built(self, model: Model, spec: ModelSpec) -> None:
        model.set_layer_orders([looped_order(spec.num_layers, self.config)])
        model.layer_phase = 1  # a built model (pgolf eval, export) is the looped one; the warm-up resets it

    @hookimpl
    def pgolf_step_start(self, state: TrainState) -> None:
        cfg = state.recipe.train
        cap_ms = 1000.0 * cfg.max_wallclock_seconds
        frac = state.elapsed_ms / cap_ms if cap_ms > 0 else state.step / max(cfg.iterations, 1)
        phase = int(frac >= self.config.start_frac)
        if phase != state.model.layer_phase:
            state.model.layer_phase = phase
            if phase:
                state.report("depth_recurrence/on_at_step", state.step)

    @hookimpl
    def pgolf_fit_end(self, state: TrainState) -> None:
        state.model.layer_phase = 1
