"""Value embeddings (VE128): a shared token table added to the attention values of chosen layers.

What: `ve = P(E_ve[ids]) · scale` once per forward (E_ve ∈ R^{V×dim} ~ N(0, 0.01²), P: dim → Hkv·D,
zeroed here and made orthogonal by `ortho_init` as in the records, `scale` init 0.1); at layer ℓ
the block's flat value projection gets `ve · layer_scale[ℓ]` (init 1.0) before the heads split, so
it flows through attention and XSA.
Why: re-injects token identity deep in the network. Source: PR #374/#414 (dim 128, layers 9, 10).
State-dict keys match the records: `ve_shared.{embed,proj}.weight`, `ve_shared.scale`,
`ve_layer_scales.{k}`. Reported Δbpb: not isolated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, TypeAlias, cast

import torch
from torch import Tensor, nn

from pgolf_core import ModelSpec, Order, PgolfError, Plugin, Range, Recipe, Tiny, declare_all, declare_role, hookimpl


@dataclass
class Config:
    dim: Annotated[int, Range(1)] = 128
    layers: Annotated[list[int], Range(0)] = field(default_factory=lambda: [9, 10])  # each once, < num_layers
    init_std: Annotated[float, Range(0)] = 0.01
    scale_init: float = 0.1
    layer_scale_init: float = 1.0


class SharedValueTable(nn.Module):
    def __init__(self, spec: ModelSpec, c: Config) -> None:
        super().__init__()
        self.embed = nn.Embedding(spec.vocab_size, c.dim)
        nn.init.normal_(self.embed.weight, std=c.init_std)
        # spec.linear: the model's linear slot, so a QAT plugin's layer class reaches this projection too.
        self.proj = spec.linear("ve_shared.proj", c.dim, spec.kv_dim) if c.dim != spec.kv_dim else None
        if self.proj is not None:
            nn.init.zeros_(cast(Tensor, self.proj.weight))
        self.scale = nn.Parameter(torch.tensor(c.scale_init, dtype=torch.float32))

    def forward(self, input_ids: Tensor) -> Tensor:
        h: Tensor = self.embed(input_ids)
        if self.proj is not None:
            h = self.proj(h)
        return h * self.scale.to(dtype=h.dtype)


class ValueEmbeddings(nn.Module):
    state_dict_prefix = "value_embed"
    flat_state_dict = True  # its keys at the state dict's top level, as in the records (ve_shared.*)

    def __init__(self, spec: ModelSpec, c: Config) -> None:
        super().__init__()
        self.layers = tuple(c.layers)
        self.ve_shared = SharedValueTable(spec, c)
        self.ve_layer_scales = nn.ParameterList(
            [nn.Parameter(torch.full((1,), c.layer_scale_init, dtype=torch.float32)) for _ in self.layers]
        )

    def forward(self, input_ids: Tensor) -> dict[int, Tensor]:
        base = self.ve_shared(input_ids)
        return {layer: base * self.ve_layer_scales[k].to(dtype=base.dtype) for k, layer in enumerate(self.layers)}


class ValueEmbed(Plugin):
    """Shared value-embedding table added to the values of selected layers."""

    name = "value_embed"
    version = "0.1.0"
    order = Order.VALUES
    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config
    TINY = Tiny(settings={"dim": 16, "layers": [2, 3]})

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        if len(set(config.layers)) != len(config.layers):
            raise PgolfError(f"layers={config.layers}: expected each layer at most once")
        n = recipe.model.num_layers
        if bad := [i for i in config.layers if not 0 <= i < n]:
            raise PgolfError(f"layers={config.layers}: expected layers in 0..{n - 1} (model.num_layers={n}), got {bad}")

    @hookimpl
    def pgolf_value_extras(self, spec: ModelSpec) -> nn.Module:
        module = ValueEmbeddings(spec, self.config)
        declare_role(module.ve_shared.embed, "weight", group="token")
        if module.ve_shared.proj is not None:
            declare_role(module.ve_shared.proj, "weight", group="matrix")
        # Control tensors, as the records' names "ve_shared.scale" and "ve_layer_scales" made them.
        declare_role(module.ve_shared, "scale", group="scalar", control=True)
        declare_all(module.ve_layer_scales, group="scalar", control=True)
        return module
