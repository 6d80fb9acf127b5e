"""pgolf core: a minimal Parameter Golf training/eval loop whose techniques come from plugins.

Public API (stable names; plugins import these from `pgolf_core` only):
- entry points: `load_recipe`, `build_model`, `train`, `evaluate`, `export`;
- the plugin contract: `Plugin`, `Order`, `hookimpl`, `Range`, `Tiny`, `PgolfError`;
- what hooks receive (`pgolf_core.types`): `Recipe`, `ModelSpec`, `Model`, `TrainState`, `Optimizers`, `Env`,
  `ValChunk`, `ExportContext`, `ExportPlan`, `TensorPlan`, `ExportFormat`, `Correction`, `Codec`, `FORMAT_KEY`;
- parts to build with: `CastedLinear`, the parameter roles `declare_role`, `declare_all`, `role_of`,
  `ParamRole`, `Roles`, `is_control`, the fake-quantization switch `FAKE_QUANT_SWITCH` and `fake_quant_off`,
  and the row quantizers every export format shares (`weight_category`, `clipped_rows`, `clipped_tensor`,
  `scaled_rows`, `max_tensor`, `dequantize_rows`), and where documents start in a token stream
  (`document_starts`).
"""

from __future__ import annotations

from pgolf_core.data.tokens import document_starts
from pgolf_core.exporter import (
    FORMAT_KEY,
    clipped_rows,
    clipped_tensor,
    dequantize_rows,
    max_tensor,
    scaled_rows,
    weight_category,
)
from pgolf_core.hookspecs import hookimpl
from pgolf_core.model import FAKE_QUANT_SWITCH, CastedLinear, ModelSpec, fake_quant_off
from pgolf_core.registry import load_recipe
from pgolf_core.run import build_model, evaluate, train
from pgolf_core.run import export_artifact as export
from pgolf_core.types import (
    PGOLF_VERSION,
    Codec,
    Correction,
    Env,
    ExportContext,
    ExportFormat,
    ExportPlan,
    Model,
    Optimizers,
    Order,
    ParamRole,
    PgolfError,
    Plugin,
    Range,
    Recipe,
    Roles,
    TensorPlan,
    Tiny,
    TrainState,
    ValChunk,
    declare_all,
    declare_role,
    is_control,
    role_of,
)

__version__ = PGOLF_VERSION


__all__ = [
    "load_recipe", "build_model", "train", "evaluate", "export", "hookimpl", "Plugin", "Order", "Range", "Tiny",
    "PgolfError",
    "Recipe", "ModelSpec", "Model", "TrainState", "Optimizers", "Env", "ValChunk", "ExportContext", "ExportPlan",
    "TensorPlan", "ExportFormat", "Correction", "Codec", "FORMAT_KEY", "CastedLinear", "ParamRole", "Roles",
    "declare_role", "declare_all", "is_control", "role_of", "FAKE_QUANT_SWITCH", "fake_quant_off",
    "weight_category", "clipped_rows", "clipped_tensor", "scaled_rows", "max_tensor", "dequantize_rows",
    "document_starts", "__version__",
]  # fmt: skip
