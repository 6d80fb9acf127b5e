"""int6 export: 6-bit integers (one per int8 byte) for the large matrices, as the records export.

What: two schemes, each reproducing its records' objects exactly.
- `scheme = "mixed"` (Variant B; PR #297/#374/#414/#415). A name's category is `embed` (tok_emb,
  lm_head), `mlp` (".mlp."), `attn` (".attn.", or ".proj." outside an MLP) or `other`. First rule
  that matches wins: non-float or numel <= `[export] keep_float_max_numel` -> "passthrough" (floats
  stored fp16); control pattern -> "passthrough_ctrl" (fp32). Record quirk: the size rule comes
  first, so the control tensors (all small: attn_scale, q_gain, ...) are stored fp16, though the
  READMEs say fp32; `control_fp32 = true` checks control patterns first (the fix, off in pr414);
  `fp16_keep` -> "passthrough_fp16"
  (PR #297's keep list); category in `int6_categories` -> int6; else the baseline int8 per row
  (quantile `[export] clip_quantile`, +-127, fp16 scales). Object, as the records write it (so
  record artifacts load here and pgolf's load in the records' `dequantize_mixed_int6`):
  `{"w": {name.q, name.scale, passthrough names}, "m": {name: "passthrough" | "passthrough_ctrl" |
  "passthrough_fp16" | {"type": "int6" | "int8"}}}`.
- `scheme = "all"` (Variant A; PR #63 `USE_INT6=1`, PR #194): every float tensor above the
  threshold becomes int6; names matching `fp16_keep` and small tensors pass through as in the
  baseline (control -> fp32, else fp16 with the original dtype recorded). Object: PR #194's
  `int6_in_int8_per_row_v1` dict (the baseline int8 object's keys; PR #63 wrote the same content
  under the tag `int8_clean_per_row_v1`, also read here).
The int6 grid of a tensor: the export plan's `clip_percentile` when it has one (gptq_lite, PR #414:
c_r = quantile(|w_r|, p), s = fp16(max(c/31, 1/31)), q in [-31, 31]; the plan's own `q`/`scale` are
used when present), else `row_rule`:
- "rowmax" (Variant C, PR #374/#415): s = fp16(max(rowmax/31, 1/31)), q in [-32, 31];
- "rowmax_eps" (PR #297): s = max(fp16(rowmax/31), fp16 tiny), no 1/31 floor, q in [-32, 31];
- "quantile" (Variant A): rows clipped to `[export] clip_quantile`, rounded with the fp32 scale
  max(c/31, 1/31), scales stored fp16;
- "plan": every int6 tensor must have a plan clip (guarantees that the #414 search ran; a run
  without a plugin making a plan is refused at setup, before training);
- "auto": rowmax for "mixed", quantile for "all" (what each record does).
A plan's `row_clip` (absolute clip c_r per row, SDClip, PR #1394) takes the place of the rule, for
int6 tensors (qmax 31) and the mixed scheme's int8 ones (qmax 127) alike, with PR #1394's grid:
s = fp16(max(c/qmax, 1e-10)), q = clamp(round(w/s), ±qmax) (a row whose scale rounds to 0 in fp16,
e.g. an all-zero row, gets q = 0). A plan entry with both `row_clip` and `clip_percentile` is refused.
Why: 63 levels instead of 255 cost little accuracy and compress far better with zstd-22, which
pays for the 3x MLP and 11 layers under 16 MB (PR #63 onward). Reported: the GPTQ-lite clip search
gains -0.0006 bpb over rowmax (PR #414). Dequantized weights come back in the live model's dtypes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor

from pgolf_core import (
    FORMAT_KEY,
    ExportFormat,
    ExportPlan,
    Order,
    PgolfError,
    Plugin,
    Recipe,
    Roles,
    TensorPlan,
    Tiny,
    clipped_rows,
    clipped_tensor,
    dequantize_rows,
    hookimpl,
    is_control,
    max_tensor,
    scaled_rows,
    weight_category,
)

INT6_MAX = 31
MIXED_PASSTHROUGH = ("passthrough", "passthrough_ctrl", "passthrough_fp16")
ALL_FORMAT = "int6_in_int8_per_row_v1"
ALL_FORMATS = (ALL_FORMAT, "int8_clean_per_row_v1")  # PR #194's tag, PR #63's tag
NO_PLAN = TensorPlan()
Category = Literal["embed", "mlp", "attn", "other"]  # weight_category's names
RowRule = Literal["auto", "rowmax", "rowmax_eps", "quantile", "plan"]


@dataclass
class Config:
    scheme: Literal["mixed", "all"] = "mixed"  # mixed (PR #297/#374/#414) | all (PR #63/#194)
    int6_categories: list[Category] = field(default_factory=lambda: ["mlp", "attn"])  # mixed only
    row_rule: RowRule = "auto"  # int6 grid without a plan clip (see above)
    fp16_keep: list[str] = field(default_factory=list)  # name substrings kept fp16 (#63/#194: tok_emb)
    control_fp32: bool = False  # mixed only; true: the fix, control tensors stay fp32 even when small


# ---------------------------------------------------------------- the grids: float32 tensor -> (integers, scales)


def int6_rowmax(t32: Tensor) -> tuple[Tensor, Tensor]:
    """Variant C (PR #374/#415): s = fp16(max(rowmax/31, 1/31)), q = clamp(round(w/s), −32, 31);
    other ranks: one fp16 scale max|w|/31 (1.0 for an all-zero tensor)."""
    if t32.ndim == 2:
        return scaled_rows(t32, t32.abs().amax(dim=1), INT6_MAX, INT6_MAX + 1)
    return max_tensor(t32, INT6_MAX, INT6_MAX + 1)


def int6_rowmax_eps(t32: Tensor) -> tuple[Tensor, Tensor]:
    """PR #297: s = max(fp16(max(rowmax/31, 1e-12)), fp16 tiny) (so small rows keep their own
    scale), q = clamp(round(w/s), −32, 31); other ranks: one fp16 scale max(max|w|/31, 1e-12)."""
    if t32.ndim == 2:
        scale = (t32.abs().amax(dim=1) / INT6_MAX).clamp_min(1e-12).to(torch.float16)
        scale = scale.clamp_min(torch.finfo(torch.float16).tiny)
        q = torch.clamp(torch.round(t32 / scale.float()[:, None]), -(INT6_MAX + 1), INT6_MAX).to(torch.int8)
        return q, scale
    scale = torch.tensor(max(t32.abs().max().item() / INT6_MAX, 1e-12), dtype=torch.float16)
    return torch.clamp(torch.round(t32 / scale.float()), -(INT6_MAX + 1), INT6_MAX).to(torch.int8), scale


def int6_percentile(t32: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    """GPTQ-lite's grid at a given percentile (PR #414): c_r = quantile(|w_r|, p) (row max for
    p = 1), s = fp16(max(c/31, 1/31)), q = clamp(round(w/s), ±31); other ranks: one fp16 scale
    max|w|/31. Used when the plan names a percentile but carries no integers."""
    if t32.ndim == 2:
        a = t32.abs()
        clip = a.amax(dim=1) if percentile >= 1.0 else torch.quantile(a, percentile, dim=1)
        return scaled_rows(t32, clip, INT6_MAX, INT6_MAX)
    return max_tensor(t32, INT6_MAX, INT6_MAX)


def int6_quantile(t32: Tensor, clip_quantile: float) -> tuple[Tensor, Tensor]:
    """Variant A (PR #63/#194): rows clipped to their `clip_quantile` of |w|, rounded with the fp32
    scale max(c/31, 1/31), scales stored fp16; other ranks: one fp32 scale c/31 (1.0 if c = 0)."""
    if t32.ndim == 2:
        return clipped_rows(t32, clip_quantile, INT6_MAX)
    return clipped_tensor(t32, clip_quantile, INT6_MAX)


def row_clipped(t32: Tensor, clip: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    """PR #1394's grid for an absolute per-row clip c (SDClip: c = k · std(row)):
    s = fp16(max(c/qmax, 1e-10)), q = clamp(round(w/s), ±qmax); w itself is not clamped. A scale
    that is 0 in fp16 (std 0) gives q = 0 where w/s is 0/0 (the record's NaN cast), ±qmax elsewhere."""
    scale = (clip.float() / qmax).clamp_min(1e-10).to(torch.float16)
    q = torch.clamp(torch.round(t32 / scale.float()[:, None]), -qmax, qmax)
    return torch.nan_to_num(q, nan=0.0).to(torch.int8), scale


# ---------------------------------------------------------------- which grid each tensor gets


@dataclass
class Grids:
    """Each tensor's grid: the export plan's (its row clip, else its percentile), else `rule`. It counts what it
    used and which tensors it quantized, so that a plan entry no tensor used is an error, never dropped silently."""

    plan: ExportPlan
    rule: str
    clip_quantile: float
    stats: Counter[str] = field(default_factory=Counter)
    int6_names: set[str] = field(default_factory=set)
    quantized: set[str] = field(default_factory=set)

    def int6(self, name: str, t: Tensor) -> tuple[Tensor, Tensor]:
        entry = self.plan.get(name, NO_PLAN)
        self.int6_names.add(name)
        self.quantized.add(name)
        if entry.row_clip is not None:
            return self.row_clip(name, t, entry, INT6_MAX)
        if entry.clip_percentile is not None:
            self.stats["int6_planned"] += 1
            if entry.q is None or entry.scale is None:
                return int6_percentile(t.float(), entry.clip_percentile)
            return checked(name, t, entry.q, entry.scale)
        if self.rule == "plan":
            raise PgolfError(
                f'int6_export: row_rule = "plan" but the export plan has no clip for {name}; enable a plugin '
                "that plans clip percentiles for it (or choose another row_rule)"
            )
        if self.rule == "rowmax_eps":
            return int6_rowmax_eps(t.float())
        return int6_rowmax(t.float()) if self.rule == "rowmax" else int6_quantile(t.float(), self.clip_quantile)

    def int8(self, name: str, t: Tensor) -> tuple[Tensor, Tensor]:
        """The mixed scheme's int8 rows: the plan's row clip, else the baseline's quantile clip."""
        entry = self.plan.get(name, NO_PLAN)
        self.quantized.add(name)
        if entry.row_clip is not None:
            return self.row_clip(name, t, entry, 127)
        if t.ndim == 2:
            return clipped_rows(t.float(), self.clip_quantile, 127)
        return clipped_tensor(t.float(), self.clip_quantile, 127)

    def row_clip(self, name: str, t: Tensor, entry: TensorPlan, qmax: int) -> tuple[Tensor, Tensor]:
        clip = entry.row_clip
        assert clip is not None
        if entry.clip_percentile is not None:
            raise PgolfError(f"int6_export: the export plan sets both row_clip and clip_percentile for {name}")
        if t.ndim != 2 or tuple(clip.shape) != (t.shape[0],) or not clip.is_floating_point():
            raise PgolfError(
                f"int6_export: the export plan's row_clip for {name} has shape {tuple(clip.shape)}; expected one "
                f"float per row of the 2-D tensor {tuple(t.shape)}"
            )
        self.stats["row_clip"] += 1
        if entry.q is not None and entry.scale is not None:
            return checked(name, t, entry.q, entry.scale)
        return row_clipped(t.float(), clip.detach().cpu(), qmax)

    def check_all_used(self) -> None:
        for what, names, done in (
            ("clip percentiles", {k for k, v in self.plan.items() if v.clip_percentile is not None}, self.int6_names),
            ("row clips", {k for k, v in self.plan.items() if v.row_clip is not None}, self.quantized),
        ):
            if stray := sorted(names - done):
                raise PgolfError(
                    f"int6_export: the export plan sets {what} for tensors that are not "
                    f"{'exported as int6' if done is self.int6_names else 'quantized'} "
                    f"({', '.join(stray[:4])}{' ...' if len(stray) > 4 else ''}); the planning plugin's categories "
                    "must match what int6_export quantizes (scheme, int6_categories, fp16_keep, "
                    "[export] keep_float_max_numel)"
                )


def checked(name: str, t: Tensor, q: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """The plan's own integers and scales, if they fit the tensor."""
    rows_ok = s.shape == ((q.shape[0],) if t.ndim == 2 else ())
    if q.shape != t.shape or q.dtype != torch.int8 or s.dtype != torch.float16 or not rows_ok:
        raise PgolfError(f"int6_export: the export plan's q/scale for {name} do not fit the tensor {tuple(t.shape)}")
    return q, s


# ---------------------------------------------------------------- the two schemes


def quantize(
    weights: Mapping[str, Tensor],
    config: Config,
    *,
    roles: Roles,
    keep_float_max_numel: int = 65_536,
    clip_quantile: float = 0.9999984,
    plan: ExportPlan | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """The export object of `config.scheme` and counts per treatment (see the module docstring)."""
    rule = config.row_rule if config.row_rule != "auto" else ("rowmax" if config.scheme == "mixed" else "quantile")
    grids = Grids(plan or {}, rule, clip_quantile)
    scheme = quantize_mixed if config.scheme == "mixed" else quantize_all
    obj = scheme(weights, config, roles, keep_float_max_numel, grids)
    grids.check_all_used()
    return obj, dict(sorted(grids.stats.items()))


def quantize_mixed(
    weights: Mapping[str, Tensor], config: Config, roles: Roles, keep_max: int, grids: Grids
) -> dict[str, Any]:
    """PR #297/#374/#414's object, untagged as the records write it: `{"w": tensors, "m": treatments}`."""
    result: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    for name, tensor in weights.items():
        t = tensor.detach().cpu().contiguous()
        control = t.is_floating_point() and is_control(name, roles)
        if config.control_fp32 and control:
            result[name], meta[name] = t.float(), "passthrough_ctrl"
        elif not t.is_floating_point() or t.numel() <= keep_max:
            result[name], meta[name] = (t.to(torch.float16) if t.is_floating_point() else t), "passthrough"
        elif control:
            result[name], meta[name] = t.float(), "passthrough_ctrl"
        elif any(p in name for p in config.fp16_keep):
            result[name], meta[name] = t.to(torch.float16), "passthrough_fp16"
        else:
            kind = "int6" if weight_category(name) in config.int6_categories else "int8"
            q, s = grids.int6(name, t) if kind == "int6" else grids.int8(name, t)
            result[name + ".q"], result[name + ".scale"], meta[name] = q, s, {"type": kind}
        grids.stats[meta[name] if isinstance(meta[name], str) else meta[name]["type"]] += 1
    return {"w": result, "m": meta}


def quantize_all(
    weights: Mapping[str, Tensor], config: Config, roles: Roles, keep_max: int, grids: Grids
) -> dict[str, Any]:
    """PR #194's `int6_in_int8_per_row_v1` object: every float tensor above `keep_max` in int6."""
    quantized: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    dtypes: dict[str, str] = {}
    passthrough: dict[str, Tensor] = {}
    orig_dtypes: dict[str, str] = {}
    qmeta: dict[str, dict[str, Any]] = {}
    for name, tensor in weights.items():
        t = tensor.detach().to("cpu").contiguous()
        keep = any(p in name for p in config.fp16_keep)
        if not t.is_floating_point():
            passthrough[name], kind = t, "passthrough"
        elif (t.numel() <= keep_max or keep) and is_control(name, roles):
            passthrough[name], kind = t.float().contiguous(), "passthrough_ctrl"
        elif t.numel() <= keep_max or keep:
            if t.dtype in (torch.float32, torch.bfloat16):
                orig_dtypes[name] = str(t.dtype).removeprefix("torch.")
                t = t.to(torch.float16).contiguous()
            passthrough[name], kind = t, "passthrough_fp16" if keep and t.numel() > keep_max else "passthrough"
        else:
            q, s = grids.int6(name, t)
            if s.ndim > 0:
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            quantized[name], scales[name], dtypes[name], kind = q, s, str(t.dtype).removeprefix("torch."), "int6"
        grids.stats[kind] += 1
    obj: dict[str, Any] = {
        FORMAT_KEY: ALL_FORMAT,
        "quantized": quantized,
        "scales": scales,
        "dtypes": dtypes,
        "passthrough": passthrough,
    }
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


# ---------------------------------------------------------------- reading back and the plugin


def dequantize(obj: Mapping[str, Any], dtypes: Mapping[str, torch.dtype] | None = None) -> dict[str, Tensor]:
    """Weights from either scheme's object (pgolf's or a record's), in `dtypes` (name → dtype of
    the live model) when given, else in the dtypes the object records (mixed: float32 for int6/int8,
    the stored dtype for passthrough)."""
    out: dict[str, Tensor] = {}
    if "w" in obj and "m" in obj:
        w, meta = obj["w"], obj["m"]
        for name, info in meta.items():
            want = dtypes.get(name) if dtypes else None
            if info in MIXED_PASSTHROUGH:
                t = w[name]
                out[name] = t.to(want) if want is not None and t.is_floating_point() else t
            elif isinstance(info, dict) and info.get("type") in ("int6", "int8"):
                out[name] = dequantize_rows(w[name + ".q"], w[name + ".scale"], want or torch.float32)
            else:
                raise PgolfError(f"int6_export: unknown entry {info!r} for {name} in a mixed int6 object")
        return out
    if obj.get("__quant_format__") not in ALL_FORMATS:
        raise PgolfError(f"int6_export: not an int6 export object (format {obj.get('__quant_format__')!r})")
    orig = obj.get("passthrough_orig_dtypes", {})
    for name, q in obj["quantized"].items():
        dtype = dtypes[name] if dtypes and name in dtypes else getattr(torch, obj["dtypes"][name])
        out[name] = dequantize_rows(q, obj["scales"][name], dtype)
    for name, t in obj["passthrough"].items():
        t = t.detach().to("cpu").contiguous()
        if dtypes and name in dtypes and t.is_floating_point():
            out[name] = t.to(dtypes[name]).contiguous()
        else:
            out[name] = t.to(getattr(torch, orig[name])).contiguous() if name in orig else t
    return out


class Int6Export(Plugin):
    """Mixed int6/int8 (PR #297/#374/#414) or all-int6 (PR #63/#194) export."""

    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config  # the base's __init__ stores it
    name = "int6_export"
    version = "0.1.0"
    order = Order.EXPORT_FORMAT
    # The tiny run's 32-dim matrices are all under the default 65,536-element float-passthrough limit, so the
    # format would have nothing to quantize.
    TINY = Tiny(overrides=("export.keep_float_max_numel=256",))

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        """What the field types cannot say: no empty name substring in `fp16_keep`."""
        if any(not s for s in config.fp16_keep):
            raise PgolfError(
                f"fp16_keep={config.fp16_keep}: expected non-empty name substrings (an empty one would match "
                "every tensor)"
            )

    @hookimpl
    def pgolf_export_format(self, recipe: Recipe) -> ExportFormat:
        return Int6Format(self.config, recipe.export.keep_float_max_numel, recipe.export.clip_quantile)


class Int6Format:
    """The int6 export format of `Config.scheme`; reads pgolf's and the records' objects."""

    label = "int6"
    tags: tuple[str, ...] = ("", *ALL_FORMATS)  # "": the mixed scheme's object, untagged as the records write it
    needs_plan: str

    def __init__(self, config: Config, keep_float_max_numel: int, clip_quantile: float) -> None:
        self.config, self.keep_max, self.clip_quantile = config, keep_float_max_numel, clip_quantile
        self.needs_plan = 'int6_export row_rule = "plan"' if config.row_rule == "plan" else ""

    def quantize(
        self, weights: Mapping[str, Tensor], plan: ExportPlan, roles: Roles, report: Callable[[str, Any], None]
    ) -> dict[str, Any]:
        obj, stats = quantize(weights, self.config, roles=roles, keep_float_max_numel=self.keep_max,
                              clip_quantile=self.clip_quantile, plan=plan)  # fmt: skip
        report("int6_export/tensors", {k: v for k, v in stats.items() if v})
        return obj

    def dequantize(self, obj: Mapping[str, Any], dtypes: Mapping[str, torch.dtype]) -> dict[str, Tensor]:
        return dequantize(obj, dtypes)
