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

import inspect
import io
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pluggy
import torch
from torch import Tensor

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
    WriteFault,
    is_control,
)

# ---------------------------------------------------------------- artifact bytes: serialization and atomic writes


def serialize(obj: Any) -> bytes:
    """`torch.save` into memory: the bytes the compressor sees, as in every record."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def deserialize(raw: bytes) -> Any:
    """`torch.load` with `weights_only=True`: an artifact holds only tensors, dicts and strings,
    so nothing in a downloaded file gets to run code."""
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then `os.replace`: a crash leaves
    either the old file or the complete new one, never a partial artifact."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a run's files from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteFault(path, exc) from exc
        raise


# ---------------------------------------------------------------- the export stack: format, corrections, codecs

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

    def quantize(self, weights: Mapping[str, Tensor], plan: ExportPlan, ctx: ExportContext) -> dict[str, Any]:
        """The object to save: the format's, plus each correction's payload under `__corrections__`. Corrections
        see the weights dequantized in `weights`' own dtypes (the live model's)."""
        obj = self.format.quantize(weights, plan, ctx.roles, ctx.report)
        if self.corrections:
            deq = self.format.dequantize(obj, {name: t.dtype for name, t in weights.items()})
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
    readers: list[Any] = [pm.hook.pgolf_export_format(recipe=recipe)]  # the exclusive hook's one answer
    if not isinstance(readers[0], Int8Format):  # the defaults' int8 reads too: an int8 artifact reads under any recipe
        readers.append(Int8Format(recipe.export.keep_float_max_numel, recipe.export.clip_quantile))
    corrections: list[Correction] = pm.hook.pgolf_export_corrections(recipe=recipe)  # pluggy drops the Nones
    codecs = codec_table(c for answer in pm.hook.pgolf_codecs() for c in answer)
    check_codec(codecs, recipe.export.compressor, recipe.export.level, recipe.source)  # a Recipe edited in code too
    if (why := readers[0].needs_plan) and not pm.hook.pgolf_export_plan.get_hookimpls():
        raise RecipeError(
            f"{recipe.source}: export format {readers[0].label} needs an export plan ({why}), but no "
            "enabled plugin implements pgolf_export_plan; enable one or change the format's setting"
        )
    return ExportStack(readers[0], readers, corrections, codecs)


class Written(NamedTuple):
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
    """Plan, quantize, correct, serialize, compress and (on the writing rank) write atomically."""
    plan: ExportPlan = {name: TensorPlan() for name in weights}
    pm.hook.pgolf_export_plan(plan=plan, weights=weights, ctx=ctx)
    raw = serialize(stack.quantize(weights, plan, ctx))
    e = ctx.recipe.export
    blob = stack.codecs[e.compressor].encode(raw, e.level)
    if write:
        write_atomic(path, blob)
    label = "+".join([stack.format.label, *(c.tag for c in stack.corrections)])  # "int6+lqer"
    return Written(f"{label}_{e.compressor}", path, len(blob), len(raw))


def read_artifact(stack: ExportStack, path: Path, dtypes: Mapping[str, torch.dtype], codec: str) -> dict[str, Tensor]:
    """The weights of an artifact, as the run's round trip and `pgolf eval` both read them."""
    return stack.dequantize(deserialize(stack.decode(path.read_bytes(), codec)), dtypes)


# ---------------------------------------------------------------- the row quantizers every format and plan shares
# Row quantizers shared by every export format (int8, int6) and plan (GPTQ-lite, SDClip).
#
# One integer grid `[-qmin, qmax]` per row (2-D tensors) or per tensor. The variants differ only in
# how the clip is chosen and in which dtype the scale is applied, and each record's exact bits depend
# on that, so each variant is one function here, parametrised by its maximum integer:
#
# - `clipped_rows` / `clipped_tensor` (baseline int8, int6 of PR #63/#194): clip to a quantile of
#   |w|, round with the fp32 scale max(c/qmax, 1/qmax), store the scale fp16 (rows) or fp32 (tensor);
# - `scaled_rows` / `max_tensor` (int6 of PR #374/#414/#415): the scale is rounded to fp16 first,
#   then q = clamp(round(w / s), -qmin, qmax) with no clipping of w.


def weight_category(name: str) -> str:
    """The records' `_classify_param`: embed, mlp, attn or other (checked in that order)."""
    if "tok_emb" in name or "lm_head" in name:
        return "embed"
    if ".mlp." in name:
        return "mlp"
    if ".attn." in name or (".proj." in name and ".mlp." not in name):
        return "attn"
    return "other"


def clipped_rows(t32: Tensor, quantile: float, qmax: int) -> tuple[Tensor, Tensor]:
    """Rows clipped to their `quantile` of |w|; fp32 scale for rounding, fp16 scale stored."""
    clip = torch.quantile(t32.abs(), quantile, dim=1)[:, None]
    scale = (clip / qmax).clamp_min(1.0 / qmax)
    q = torch.round(torch.clamp(t32, -clip, clip) / scale).clamp(-qmax, qmax).to(torch.int8)
    return q.contiguous(), scale.squeeze(1).to(torch.float16).contiguous()


def clipped_tensor(t32: Tensor, quantile: float, qmax: int) -> tuple[Tensor, Tensor]:
    """One fp32 scale. The clip is a Python float and `clip / qmax` is divided in float64 before
    the fp32 cast: that is what makes the scale bit-identical to the records'."""
    clip = float(torch.quantile(t32.abs().flatten(), quantile).item())
    scale = torch.tensor(clip / qmax if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.round(torch.clamp(t32, -clip, clip) / scale).clamp(-qmax, qmax).to(torch.int8)
    return q.contiguous(), scale


def scaled_rows(t32: Tensor, clip: Tensor, qmax: int, qmin: int) -> tuple[Tensor, Tensor]:
    """s = fp16(max(clip_r/qmax, 1/qmax)), q = clamp(round(w / s), -qmin, qmax)."""
    scale = (clip / qmax).clamp_min(1.0 / qmax).to(torch.float16)
    q = torch.clamp(torch.round(t32 / scale.float()[:, None]), -qmin, qmax).to(torch.int8)
    return q, scale


def max_tensor(t32: Tensor, qmax: int, qmin: int) -> tuple[Tensor, Tensor]:
    """One fp16 scale max|w|/qmax (1.0 for an all-zero tensor)."""
    amax = t32.abs().max().item()
    scale = torch.tensor(amax / qmax if amax > 0 else 1.0, dtype=torch.float16)
    return torch.clamp(torch.round(t32 / scale.float()), -qmin, qmax).to(torch.int8), scale


def dequantize_rows(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """q * scale, per row (broadcast over trailing dims) or per tensor, cast to `dtype`."""
    s = scale.float()
    return (q.float() * (s.view(-1, *[1] * (q.ndim - 1)) if s.ndim else s)).to(dtype).contiguous()


# ---------------------------------------------------------------- the baseline's int8 format (the default)
# `Int8Format.quantize` produces exactly the object of the baseline's `quantize_state_dict_int8` (same keys, dtypes
# and values), so an official `final_model.int8.ptz` loads through `Int8Format.dequantize` and a pgolf artifact loads
# through the baseline's dequantizer.

INT8_FORMAT = "int8_clean_per_row_v1"
# The baseline writes the clip quantile as 99.99984 / 100 (= 0.9999984000000001); torch.quantile
# works in the tensor's dtype, where it equals 0.9999984, so either spelling gives the same bits.
DEFAULT_CLIP_QUANTILE = 99.99984 / 100.0


class Int8Format:
    """The default export format: the baseline's int8 per-row object (`[export]` keep_float_max_numel
    and clip_quantile)."""

    label = "int8"
    tags: tuple[str, ...] = (INT8_FORMAT,)
    needs_plan = ""

    def __init__(self, keep_float_max_numel: int = 65_536, clip_quantile: float = DEFAULT_CLIP_QUANTILE) -> None:
        self.keep_float_max_numel = keep_float_max_numel
        self.clip_quantile = clip_quantile

    def quantize(
        self, weights: Mapping[str, Tensor], plan: ExportPlan, roles: Roles, report: Callable[[str, Any], None]
    ) -> dict[str, Any]:
        """The baseline's int8 export object (its size stats, which the baseline only logs, are not computed).

        Non-float tensors pass through unchanged; float tensors with at most `keep_float_max_numel`
        elements pass through (as commented below); the rest are quantized per row (2-D) or per tensor.
        """
        planned = [name for name, entry in plan.items() if entry.clip_percentile is not None or entry.q is not None]
        if planned:  # e.g. gptq_lite with int6_export ablated: say so instead of dropping it silently
            report("int8/export_plan_ignored", len(planned))
        obj: dict[str, Any] = {FORMAT_KEY: INT8_FORMAT, "quantized": {}, "scales": {}, "dtypes": {}, "passthrough": {}}
        qmeta: dict[str, dict[str, Any]] = {}  # optional keys, added after these only when non-empty, like the baseline
        orig_dtypes: dict[str, str] = {}
        for name, tensor in weights.items():
            t = tensor.detach().to("cpu").contiguous()
            if not t.is_floating_point() or t.numel() <= self.keep_float_max_numel:
                # small float tensors pass through: control tensors as fp32; fp32/bf16 others as fp16 with
                # their dtype recorded so loading restores it (fp16 and other float dtypes stay as they are)
                if t.is_floating_point() and is_control(name, roles):
                    t = t.float().contiguous()
                elif t.dtype in (torch.float32, torch.bfloat16):
                    orig_dtypes[name] = str(t.dtype).removeprefix("torch.")
                    t = t.to(torch.float16).contiguous()
                obj["passthrough"][name] = t
                continue
            if t.ndim == 2:
                q, s = clipped_rows(t.float(), self.clip_quantile, 127)
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            else:
                q, s = clipped_tensor(t.float(), self.clip_quantile, 127)
            obj["quantized"][name], obj["scales"][name], obj["dtypes"][name] = q, s, str(t.dtype).removeprefix("torch.")
        if qmeta:
            obj["qmeta"] = qmeta
        if orig_dtypes:
            obj["passthrough_orig_dtypes"] = orig_dtypes
        return obj

    def dequantize(self, obj: Mapping[str, Any], dtypes: Mapping[str, torch.dtype]) -> dict[str, Tensor]:
        """Weights back from an int8 object (pgolf's or an official artifact's): `q * scale` per row
        (broadcast over trailing dims) or per tensor, cast to the recorded dtype (`dtypes` is not read)."""
        if obj.get(FORMAT_KEY) != INT8_FORMAT:
            raise PgolfError(f"not an {INT8_FORMAT} object (format tag {obj.get(FORMAT_KEY)!r})")
        orig_dtypes = obj.get("passthrough_orig_dtypes", {})
        out = {
            n: dequantize_rows(q, obj["scales"][n], getattr(torch, obj["dtypes"][n]))
            for n, q in obj["quantized"].items()
        }
        for name, t in obj["passthrough"].items():
            t = t.detach().to("cpu").contiguous()
            out[name] = t.to(getattr(torch, orig_dtypes[name])).contiguous() if name in orig_dtypes else t
        return out


# ---------------------------------------------------------------- code bytes: the other part of the artifact

CORE_DIR = Path(__file__).resolve().parent
# Tools that are not part of a training run's code path (data preparation, the CLI front end, the kit).
NOT_COUNTED = ("cli.py", "data/build.py", "data/fineweb.py", "data/caseops.py",
               "ablate/", "testing.py", "authoring.py")  # fmt: skip


def code_size(plugins: list[Any]) -> tuple[int, int]:
    """(bytes, files) of the source a submission would need: the core's training path plus the enabled plugins.

    The challenge counts the bytes of one `train_gpt.py`; pgolf counts the bytes of the core modules used by a
    run and of each enabled plugin's module (data-preparation tools and the CLI front end and `pgolf ablate`,
    which drives runs from outside, are excluded), an upper bound on what an exported single script needs.
    """
    core = [p for p in sorted(CORE_DIR.rglob("*.py")) if not p.relative_to(CORE_DIR).as_posix().startswith(NOT_COUNTED)]
    files = core + sorted({Path(inspect.getfile(type(p))).resolve() for p in plugins} - set(core))
    return sum(len(f.read_bytes()) for f in files), len(files)
