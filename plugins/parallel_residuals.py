"""Parallel residuals: attention and MLP of the last blocks read the same input (GPT-J style).

What: from block `start_layer` on, `x_out = x_in + attn_scale·Attn(norm(x_in)) + mlp_scale·MLP(norm(x_in))`
instead of the MLP reading `x_in + attn_scale·Attn(...)`; `x_in` is the block's `resid_mix` of the
stream and x0, as in every block. The learned merge is the blocks' own per-channel `attn_scale` and
`mlp_scale` (control tensors, init 1): no extra parameters or bytes. Blocks are physical, so with
depth recurrence every pass of a looped block is parallel.
Why: the two sublayers run side by side, and in PR #1412 the quantization gap tightened on all three
seeds while the pre-quantization score barely moved. Source: PR #1412 and PR #1493 (start 7 of 11);
PR #1204 had a two-lane variant with a learned 2×2 lane merge (not implemented here). Reported Δbpb:
about −0.0022 for PR #1204's variant on its stack (one seed); PR #1412's −0.0021 is for three changes
together. It fills the model's static `parallel` slot before compilation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeAlias

from pgolf_core import Model, ModelSpec, Order, PgolfError, Plugin, Range, Recipe, Tiny, hookimpl


@dataclass
class Config:
    start_layer: Annotated[int, Range(0)] = 7  # the first parallel block (physical index); the records ran 7 of 11


class ParallelResiduals(Plugin):
    """GPT-J-style parallel attention and MLP from `start_layer` on."""

    name = "parallel_residuals"
    version = "0.1.0"
    order = Order.MODEL
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config
    # Parallel lanes differ from sequential ones by what attention wrote, which a 6-step run with zero-init
    # output projections keeps tiny; a larger matrix lr makes it measurable.
    TINY = Tiny(settings={"start_layer": 0}, overrides=("train.matrix_lr=0.5",))

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        if config.start_layer >= (layers := recipe.model.num_layers):
            raise PgolfError(f"start_layer={config.start_layer}: expected 0..{layers - 1} (a block index)")

    @hookimpl
    def pgolf_model_built(self, model: Model, spec: ModelSpec) -> None:
        for block in model.blocks[self.config.start_layer :]:
            # `blocks` is typed as a ModuleList of `Module`s, whose `__setattr__` takes only tensors and modules.
            block.parallel = True  # type: ignore[assignment]
