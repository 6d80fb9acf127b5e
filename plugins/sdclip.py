"""SDClip: clip each row of a quantized matrix at k · std(row) instead of searching for a clip.

What (PR #1394's `gptq_quantize_weight` / `gptq_mixed_quantize`): for every float matrix the exporter
quantizes (2-D, more than `[export] keep_float_max_numel` elements, not a control tensor, category in
`categories`), the export plan gets the absolute per-row clip c_r = k · std(w_r) (fp32, torch's
unbiased std), with k = `embed_k` (20.0) for the token embedding (a name containing "tok_emb", the
record's rule) and k = `matrix_k` (12.85) for every other matrix. int6_export turns a row clip into
the record's grid: s_r = fp16(max(c_r / qmax, 1e-10)), q = clamp(round(w / s_r), −qmax, qmax), where
qmax is the tensor's integer range in the exporter: 31 for int6 tensors (the record's matrices,
MATRIX_BITS = 6) and 127 for the mixed scheme's int8 ones (the record's tok_emb, EMBED_BITS = 8:
int6_export's default int6_categories leave tok_emb int8, as #1394 does). Weights are not clamped
before rounding; the integer clamp is the clip.
Not reproduced: the record quantizes with full-Hessian GPTQ (error feedback over columns) on that
grid; pgolf has no calibration pass yet, so the integers are round-to-nearest on the record's grid,
which is exactly what the record's GPTQ gives with an identity Hessian (its golden test uses that).
Why: the compressed size of a quantized row follows the entropy of its integers, about
b − log2(k) + const for Gaussian-like weights with c = k · σ; so k sets the artifact size directly
and monotonically (larger k: fewer distinct integers in use, smaller artifact), where a search for
the lowest reconstruction error (GPTQ-lite) moves the size whenever the weights change. One scale
per row, no candidates: faster as well.
Source: PR #1394 (k tuned there so the artifact lands just under 16 MB). Reported Δbpb: not isolated
(introduced with the 8192 vocabulary, GPTQ'd embeddings and layer looping: 1.08563, 5-seed mean).
It replaces the percentile search: enabling it together with gptq_lite is a recipe error.
Settings: `matrix_k`, `embed_k`, `categories` (which tensors get a row clip; the others keep the
exporter's own rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeAlias

from torch import Tensor

from pgolf_core import (
    ExportContext,
    ExportPlan,
    Order,
    PgolfError,
    Plugin,
    Range,
    Recipe,
    Roles,
    TensorPlan,
    Tiny,
    hookimpl,
    is_control,
    weight_category,
)

Category = Literal["embed", "mlp", "attn", "other"]  # weight_category's names
Width = Annotated[float, Range(0, open="low")]  # a clip width in standard deviations, > 0


@dataclass
class Config:
    matrix_k: Width = 12.85  # PR #1394 MATRIX_CLIP_SIGMAS (int6 matrices)
    embed_k: Width = 20.0  # PR #1394 EMBED_CLIP_SIGMAS (tok_emb, int8)
    categories: list[Category] = field(default_factory=lambda: ["embed", "mlp", "attn"])  # the record's GPTQ'd kinds


def row_clip(w: Tensor, k: float) -> Tensor:
    """c_r = k · std(w_r) in fp32 (unbiased std, as the record's `W.std(dim=1)`), shape [rows]."""
    return k * w.float().std(dim=1)


class SDClip(Plugin):
    """Per-row clip k · std(row) in the export plan (PR #1394)."""

    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config  # the base's __init__ stores it
    name = "sdclip"
    version = "0.1.0"
    order = Order.EXPORT_PLAN  # after plugins that change weights before export (e.g. pruning)
    requires = ("int6_export",)  # the format that honours TensorPlan.row_clip
    conflicts = ("gptq_lite",)  # PR #1394's SDClip replaced the percentile search
    # The tiny run's 32-dim matrices are all under the default 65,536-element float-passthrough limit, so the
    # exporter would have nothing to quantize; int6_export, the format that applies row clips, is enabled in
    # both runs.
    TINY = Tiny(partners=("int6_export",), overrides=("export.keep_float_max_numel=256",))

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        """The plugins it needs or replaces."""
        enabled = recipe.enabled_plugins
        if "gptq_lite" in enabled:
            raise PgolfError(
                "gptq_lite is enabled too; SDClip replaces its clip-percentile search (PR #1394), "
                "so enable one of them (e.g. --disable gptq_lite)"
            )
        if "int6_export" not in enabled:
            raise PgolfError(
                "needs int6_export (the export format that applies row clips); enable [plugins.int6_export]"
            )

    def wanted(self, name: str, t: Tensor, keep_float_max_numel: int, roles: Roles) -> bool:
        return (
            t.is_floating_point()
            and t.ndim == 2
            and t.numel() > keep_float_max_numel
            and not is_control(name, roles)
            and weight_category(name) in self.config.categories
        )

    def k_for(self, name: str) -> float:
        return self.config.embed_k if "tok_emb" in name else self.config.matrix_k

    @hookimpl
    def pgolf_export_plan(self, plan: ExportPlan, weights: dict[str, Tensor], ctx: ExportContext) -> None:
        keep_max = ctx.recipe.export.keep_float_max_numel
        counts = {"matrix": 0, "embed": 0}
        for name, w in weights.items():
            if not self.wanted(name, w, keep_max, ctx.roles):
                continue
            entry = plan.setdefault(name, TensorPlan())
            if entry.clip_percentile is not None:
                raise PgolfError(f"sdclip: the export plan already has a clip percentile for {name} (gptq_lite?)")
            entry.row_clip = row_clip(w.detach().cpu(), self.k_for(name)).contiguous()
            counts["embed" if "tok_emb" in name else "matrix"] += 1
        ctx.report("sdclip/tensors", {k: v for k, v in counts.items() if v})
