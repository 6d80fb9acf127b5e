"""Build the model of a recipe: the baseline GPT with its slots filled by the enabled plugins."""

from __future__ import annotations

from dataclasses import fields

import pluggy
import torch

from pgolf_core.model import GPT, ModelParts, ModelSpec
from pgolf_core.registry import create_manager
from pgolf_core.types import Recipe


def model_spec(recipe: Recipe, attention: str = "sdpa") -> ModelSpec:
    """The `[model]` settings the model needs (the same names), with the MLP width and the attention
    backend resolved and the training sequence length (for rotary scaling) added."""
    m = recipe.model
    shared = {f.name: getattr(m, f.name) for f in fields(ModelSpec) if f.init and hasattr(m, f.name)}
    shared.update(mlp_hidden=m.mlp_hidden or int(m.mlp_mult * m.model_dim), attention=attention)  # as the records
    return ModelSpec(**shared, train_seq_len=recipe.train.train_seq_len)


def build_model_with(spec: ModelSpec, pm: pluggy.PluginManager, seed: int) -> GPT:
    """Seeded CPU fp32 construction, then `pgolf_model_built` (init schemes). Collecting hooks'
    answers come without the Nones (pluggy drops them)."""
    spec.linear_factory = lambda role, i, o: pm.hook.pgolf_linear(spec=spec, role=role, in_features=i, out_features=o)
    parts = ModelParts(
        embed=lambda: pm.hook.pgolf_embed(spec=spec),
        value_extras=lambda: pm.hook.pgolf_value_extras(spec=spec),
        rotary=lambda layer: pm.hook.pgolf_rotary(spec=spec, layer=layer),
        attention_post=lambda layer: pm.hook.pgolf_attention_post(spec=spec, layer=layer),
        mlp=lambda layer: pm.hook.pgolf_mlp(spec=spec, layer=layer),
    )
    torch.manual_seed(seed)
    model = GPT(spec, parts)
    pm.hook.pgolf_model_built(model=model, spec=spec)
    return model


def build_model(recipe: Recipe, pm: pluggy.PluginManager | None = None) -> GPT:
    """The recipe's model on CPU in fp32 with its plugins applied; deterministic for `run.seed`."""
    pm = pm or create_manager(recipe)
    return build_model_with(model_spec(recipe), pm, recipe.run.seed)
