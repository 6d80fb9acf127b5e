"""Library entry points beyond training: evaluate a checkpoint, export weights to an artifact.

Both reuse the run's setup (`pgolf_core.setup`) and the run's export reader and writer, so a score
or an artifact made here equals the one `pgolf run` makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pgolf_core import exporter, records
from pgolf_core.exporter import deserialize
from pgolf_core.registry import plugin_parts
from pgolf_core.roles import collect_roles
from pgolf_core.run import score
from pgolf_core.setup import build, eval_rows, load_data, load_weights, setup_env
from pgolf_core.types import ExportContext, PgolfError, Recipe


def load_checkpoint(
    path: str | Path, stack: exporter.ExportStack, dtypes: dict[str, torch.dtype], codec: str
) -> dict[str, torch.Tensor]:
    """A raw state dict (`final_model.pt`, as the records save it) or an artifact, read by the
    same code as a run's round trip (any format and codec the recipe's plugins provide)."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: checkpoint not found")
    try:
        try:
            obj = deserialize(path.read_bytes())  # an uncompressed torch.save
        except Exception:  # noqa: BLE001 - not a torch file: a compressed artifact
            return exporter.read_artifact(stack, path, dtypes, codec)
        return stack.dequantize(obj, dtypes)
    except PgolfError as exc:  # a format or codec the recipe's plugins do not provide: name the file
        raise PgolfError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: say what was tried
        raise PgolfError(
            f"{path}: neither a state dict (torch.save) nor an artifact of the recipe's codecs "
            f"({', '.join(sorted(stack.codecs))}) and formats: {type(exc).__name__}: {exc} "
            f'(read as [export] compressor="{codec}"; a codec a plugin adds needs that plugin enabled, and one '
            "without magic bytes needs [export] compressor set to it)"
        ) from None


def check_matches(checkpoint: str | Path, live: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint of another model. The shapes that differ among the common keys come first: another
    width is the usual cause (a --smoke run's checkpoint read with its full-size recipe), and it shows as a
    missing key only where a module exists at one width and not at the other (a projection to the model width)."""
    differ = [k for k, v in live.items() if k in weights and weights[k].shape != v.shape]
    only_model, only_ckpt = sorted(set(live) - set(weights)), sorted(set(weights) - set(live))
    shapes = ", ".join(f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(live[k].shape)}" for k in differ[:3])
    problems = [f"{len(differ)} tensors have other shapes than the recipe's model ({shapes})"] if differ else []
    if only_model or only_ckpt:
        problems.append(f"keys do not match: missing {only_model[:5]}, unexpected {only_ckpt[:5]} "
                        f"({len(only_model)} missing, {len(only_ckpt)} unexpected)")  # fmt: skip
    if problems:
        raise PgolfError(
            f"{checkpoint}: {'; '.join(problems)}; was it trained with other settings? A run's own "
            f"recipe.resolved.toml rebuilds its model: pgolf eval {Path(checkpoint).parent}"
        )


def evaluate(
    recipe: Recipe,
    checkpoint: str | Path | None = None,
    model: torch.nn.Module | None = None,
    log: Any = print,
    plugin_dirs: tuple = (),
) -> dict[str, Any]:
    """Score weights on the recipe's validation data (standard eval, plus sliding if configured).
    `plugin_dirs`: the local plugin files the run loaded (`--plugins-dir`), whose formats and codecs read it."""
    env = setup_env(recipe.run.device)
    plugins = plugin_parts(recipe, plugin_dirs)
    data = load_data(recipe, env, log, train=False)  # data first: it fails before any model is built
    if model is None:
        model, _ = build(recipe, plugins, env, log)
    if checkpoint is not None:
        dtypes = {k: v.dtype for k, v in model.state_dict().items()}
        weights = load_checkpoint(checkpoint, plugins.export, dtypes, recipe.export.compressor)
        check_matches(checkpoint, model.state_dict(), weights)
        load_weights(model, weights)
    model.to(env.device)
    report = lambda key, value: log(f"{key}:{value}")  # noqa: E731
    rt, sl = score(recipe, plugins.pm, data, (model,) * 2, env, eval_rows(recipe, env), log, report, "eval")
    out: dict[str, Any] = {"val_loss": rt.val_loss, "val_bpb": rt.val_bpb, "tokens": rt.tokens}
    if sl is not None:
        out.update(sliding_val_loss=sl.val_loss, sliding_val_bpb=sl.val_bpb)
    return out


def export_artifact(
    recipe: Recipe, model: torch.nn.Module, out_dir: str | Path, log: Any = print, plugin_dirs: tuple = ()
) -> dict[str, Any]:
    """Quantize and compress `model`'s weights as the recipe's plugins say (`plugin_dirs`: local plugin
    files, as for `evaluate`); returns byte counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plugins = plugin_parts(recipe, plugin_dirs)
    reports: dict[str, Any] = {}
    ctx = ExportContext(recipe, collect_roles(model), reports.__setitem__)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    written = exporter.write_artifact(plugins.export, plugins.pm, weights, ctx, out / "final_model.ptz")
    code_bytes = sum(len(f.read_bytes()) for f in records.code_files(plugins.ordered))
    return {
        "path": str(written.path),
        "model_bytes": written.model_bytes,
        "code_bytes": code_bytes,
        "artifact_bytes": written.model_bytes + code_bytes,
        "format": written.label,
        "reports": reports,
    }
