"""The export format: how trained weights become the artifact's bytes and come back.

One path writes and one path reads, so the run's round trip scores exactly what `pgolf eval` will:

    plan    = {name: TensorPlan()}            pgolf_export_plan edits it (GPTQ-lite, SDClip)
    obj     = format.quantize(weights, plan)  the one exclusive format (int8 default, int6)
    deq     = format.dequantize(obj)
    for each correction (LQER):               stacked in order; each stores a payload in obj
        payload = correction.encode(weights, deq, plan); deq = correction.apply(deq, payload)
    blob    = codec.encode(torch.save(obj))   the recipe's `[export] compressor` and `level`

`read_artifact` undoes it: the codec is named by the blob's magic bytes (else it is the recipe's
compressor: raw brotli has none), the format by the object's `__quant_format__` tag, the
corrections by the keys of its `__corrections__` table. A plugin's format, correction or codec is
therefore read back by any recipe that enables that plugin (`pgolf eval` with the run's recipe).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import Tensor

from pgolf_core.artifact import deserialize, serialize, write_atomic
from pgolf_core.types import (
    Codec,
    Correction,
    ExportContext,
    ExportFormat,
    ExportPlan,
    PgolfError,
    Recipe,
    RecipeError,
    Roles,
    TensorPlan,
)

FORMAT_KEY = "__quant_format__"
CORRECTIONS_KEY = "__corrections__"


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise PgolfError('codec "zstd" needs the zstandard package: pip install zstandard') from exc
    return zstandard


BUILTIN_CODECS = (
    Codec("zlib", lambda raw, level: zlib.compress(raw, level), zlib.decompress, b"", (0, 9)),
    Codec(  # PR #63 onward: one frame, one thread (threads change the bytes)
        "zstd",
        lambda raw, level: _zstandard().ZstdCompressor(level=level).compress(raw),
        lambda blob: _zstandard().ZstdDecompressor().decompress(blob),
        b"\x28\xb5\x2f\xfd",
        (1, 22),
    ),
)


def codec_table(codecs: Iterable[Codec]) -> dict[str, Codec]:
    """Name -> codec; two codecs with one name is an error (a reader could not choose)."""
    table: dict[str, Codec] = {}
    for codec in codecs:
        if codec.name in table:
            raise PgolfError(f'two codecs are named "{codec.name}"; each codec name must be unique')
        table[codec.name] = codec
    return table


def check_codec(codecs: Mapping[str, Codec], name: str, level: int, source: str) -> None:
    """The recipe's codec, checked when the run's plugins load (a plugin may add codecs)."""
    if name not in codecs:
        raise RecipeError(
            f'{source}: [export] compressor="{name}": no such codec (available: {", ".join(sorted(codecs))}; '
            "a codec plugin adds its codec when its [plugins.<name>] table is enabled)"
        )
    low, high = codecs[name].levels
    if not low <= level <= high:
        raise RecipeError(f'{source}: [export] level={level}: expected {low}..{high} for compressor "{name}"')
    if name == "zstd":
        _zstandard()


@dataclass
class ExportStack:
    """A run's export parts: the format that writes, every format that reads (the writer first,
    the built-in int8 last), the corrections in plugin order, and all codecs by name."""

    format: ExportFormat
    readers: list[ExportFormat]
    corrections: list[Correction]
    codecs: dict[str, Codec]

    def quantize(
        self,
        weights: Mapping[str, Tensor],
        plan: ExportPlan,
        roles: Roles,
        dtypes: Mapping[str, torch.dtype],
        report: Callable[[str, Any], None],
    ) -> dict[str, Any]:
        """The object to save: the format's, plus each correction's payload under `__corrections__`."""
        obj = self.format.quantize(weights, plan, roles, report)
        if self.corrections:
            deq = self.format.dequantize(obj, dtypes)
            obj[CORRECTIONS_KEY] = {}
            for correction in self.corrections:
                payload = obj[CORRECTIONS_KEY][correction.tag] = correction.encode(weights, deq, plan)
                deq = correction.apply(deq, payload)
        return obj

    def dequantize(self, obj: Any, dtypes: Mapping[str, torch.dtype]) -> dict[str, Tensor]:
        """Weights from a saved object: the reader its tag names, then its corrections in order.
        A plain state dict (a `final_model.pt`) is returned as it is."""
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        tag = obj.get(FORMAT_KEY, "") if isinstance(obj, Mapping) else None
        reader = next((f for f in self.readers if tag in f.tags), None)
        if reader is None:
            known = sorted({t or "(untagged)" for f in self.readers for t in f.tags})
            raise PgolfError(
                f"artifact format {tag or '(untagged)'!r} is not read by the enabled plugins (they read: "
                f"{', '.join(known)}); evaluate with the recipe that wrote it"
            )
        weights = reader.dequantize(obj, dtypes)
        by_tag = {c.tag: c for c in self.corrections}
        for ctag, payload in obj.get(CORRECTIONS_KEY, {}).items():
            if ctag not in by_tag:
                raise PgolfError(f"artifact holds correction {ctag!r} but no enabled plugin applies it")
            weights = by_tag[ctag].apply(weights, payload)
        return weights

    def decode(self, blob: bytes, codec: str) -> bytes:
        """Raw bytes of an artifact: the codec its magic bytes name, else the recipe's `codec`."""
        named = next((c for c in self.codecs.values() if c.magic and blob.startswith(c.magic)), None)
        return (named or self.codecs[codec]).decode(blob)


def export_stack(pm: pluggy.PluginManager, recipe: Recipe) -> ExportStack:
    """The run's format, readers, corrections and codecs; the recipe's codec checked now, before
    anything is trained."""
    impls = pm.hook.pgolf_export_format.get_hookimpls()  # registration order: the defaults first
    # The formats that answered (pluggy types an answer as object; ExportStack holds them as ExportFormat).
    readers: list[Any] = [f for impl in reversed(impls) if (f := impl.function(recipe=recipe)) is not None]
    corrections: list[Correction] = pm.hook.pgolf_export_corrections(recipe=recipe)  # pluggy drops the Nones
    codecs = codec_table(c for answer in pm.hook.pgolf_codecs() for c in answer)
    check_codec(codecs, recipe.export.compressor, recipe.export.level, recipe.source)  # a Recipe edited in code too
    if (why := readers[0].needs_plan) and not pm.hook.pgolf_export_plan.get_hookimpls():
        raise RecipeError(
            f"{recipe.source}: export format {readers[0].label} needs an export plan ({why}), but no "
            "enabled plugin implements pgolf_export_plan; enable one or change the format's setting"
        )
    return ExportStack(readers[0], readers, corrections, codecs)


@dataclass
class Written:
    label: str  # "int6_zstd": format and codec
    path: Path
    model_bytes: int
    raw_bytes: int


def write_artifact(
    stack: ExportStack,
    pm: pluggy.PluginManager,
    weights: dict[str, Tensor],
    ctx: ExportContext,
    path: Path,
    write: bool = True,
) -> Written:
    """Plan, quantize, correct, serialize, compress and (on the writing rank) write atomically.
    Corrections see the weights dequantized in `weights`' own dtypes (the live model's)."""
    plan: ExportPlan = {name: TensorPlan() for name in weights}
    pm.hook.pgolf_export_plan(plan=plan, weights=weights, ctx=ctx)
    dtypes = {name: t.dtype for name, t in weights.items()}
    raw = serialize(stack.quantize(weights, plan, ctx.roles, dtypes, ctx.report))
    e = ctx.recipe.export
    blob = stack.codecs[e.compressor].encode(raw, e.level)
    if write:
        write_atomic(path, blob)
    label = "+".join([stack.format.label, *(c.tag for c in stack.corrections)])  # "int6+lqer"
    return Written(f"{label}_{e.compressor}", path, len(blob), len(raw))


def read_artifact(stack: ExportStack, path: Path, dtypes: Mapping[str, torch.dtype], codec: str) -> dict[str, Tensor]:
    """The weights of an artifact, as the run's round trip and `pgolf eval` both read them."""
    return stack.dequantize(deserialize(stack.decode(path.read_bytes(), codec)), dtypes)
