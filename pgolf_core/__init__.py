"""pgolf core: a minimal Parameter Golf training/eval loop whose techniques come from plugins.

Public API (stable names; plugins may import these and `hookimpl` only):
`load_recipe`, `build_model`, `train`, `evaluate`, `export`, `hookimpl`, `ModelSpec`,
`CastedLinear`, `PgolfError`; parameter roles `declare_role`, `declare_all`, `role_of`, `ParamRole`,
`Roles`, `is_control`; the export types `TensorPlan`, `ExportPlan`, `ExportFormat`, `Correction`,
`Codec`, `FORMAT_KEY`; the shared row quantizers `quant`. Plugins import these from `pgolf_core` only.
"""

from __future__ import annotations

from typing import Any

from pgolf_core import quant
from pgolf_core.errors import PgolfError
from pgolf_core.exporter import FORMAT_KEY, Codec, Correction, ExportFormat, ExportPlan, TensorPlan
from pgolf_core.hookspecs import hookimpl
from pgolf_core.model import CastedLinear, ModelSpec
from pgolf_core.roles import ParamRole, Roles, declare_all, declare_role, is_control, role_of

__version__ = "0.1.0"


def load_recipe(path: Any, overrides: Any = (), **kwargs: Any) -> Any:
    """Read and validate a TOML recipe (see `pgolf_core.recipe.load_recipe`)."""
    from pgolf_core.recipe import load_recipe as _load

    return _load(path, overrides, **kwargs)


def build_model(recipe: Any) -> Any:
    """The recipe's model on CPU in fp32, plugins applied, deterministic for `recipe.run.seed`."""
    from pgolf_core.build import build_model as _build

    return _build(recipe)


def train(recipe: Any, out_dir: Any = None, **kwargs: Any) -> dict:
    """Run a recipe end to end; returns the summary dict (also written to `out_dir/summary.json`)."""
    from pgolf_core.train import train as _train

    return _train(recipe, out_dir, **kwargs)


def evaluate(recipe: Any, checkpoint: Any = None, model: Any = None, **kwargs: Any) -> dict:
    """Score a checkpoint or model on the recipe's validation data."""
    from pgolf_core.api import evaluate as _evaluate

    return _evaluate(recipe, checkpoint, model, **kwargs)


def export(recipe: Any, model: Any, out_dir: Any, **kwargs: Any) -> dict:
    """Quantize + compress a model's weights into an artifact as the recipe says."""
    from pgolf_core.api import export_artifact

    return export_artifact(recipe, model, out_dir, **kwargs)


__all__ = [
    "load_recipe", "build_model", "train", "evaluate", "export", "hookimpl", "ModelSpec", "CastedLinear", "PgolfError",
    "ParamRole", "Roles", "declare_role", "declare_all", "is_control", "role_of", "TensorPlan", "ExportPlan",
    "ExportFormat", "Correction", "Codec", "FORMAT_KEY", "quant", "__version__",
]  # fmt: skip
