"""The defaults of the hook catalog, as one built-in plugin registered before every other, so that
pluggy calls it last: an exclusive hook's default answers only when no enabled plugin did.

Why a plugin and not `if answer is None` branches in the core: the defaults are then listed,
ordered and documented like every other answer, and a reader finds all of them in this file.
"""

from __future__ import annotations

from torch import nn

from pgolf_core.exporter import BUILTIN_CODECS, Int8Format
from pgolf_core.hookspecs import hookimpl
from pgolf_core.model import MLP, CastedLinear, ModelSpec, Rotary
from pgolf_core.types import Codec, ExportFormat, Plugin, Recipe


class Defaults(Plugin):
    """The naive baseline's parts: full RoPE, relu² MLP, CastedLinear, int8 export, zlib and zstd."""

    name = "defaults"
    version = "builtin"
    order = 10_000

    @hookimpl
    def pgolf_rotary(self, spec: ModelSpec, layer: int) -> nn.Module:
        return Rotary(spec.head_dim, base=spec.rope_base)

    @hookimpl
    def pgolf_mlp(self, spec: ModelSpec, layer: int) -> nn.Module:
        return MLP(spec)

    @hookimpl
    def pgolf_linear(self, spec: ModelSpec, role: str, in_features: int, out_features: int) -> nn.Module:
        return CastedLinear(in_features, out_features)

    @hookimpl
    def pgolf_export_format(self, recipe: Recipe) -> ExportFormat:
        return Int8Format(recipe.export.keep_float_max_numel, recipe.export.clip_quantile)

    @hookimpl
    def pgolf_codecs(self) -> list[Codec]:
        return list(BUILTIN_CODECS)
