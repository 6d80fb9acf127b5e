"""Library entry points beyond training: evaluate a checkpoint, export weights to an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pgolf_core import artifact, evaluation
from pgolf_core.attention import resolve_backend
from pgolf_core.build import build_model_with, configure, model_spec
from pgolf_core.data.bpb import build_byte_tables, load_tokenizer_for
from pgolf_core.data.loader import load_validation_tokens
from pgolf_core.data.shards import check_shards
from pgolf_core.errors import PgolfError
from pgolf_core.model import apply_training_precision
from pgolf_core.optim import Optimizers
from pgolf_core.recipe import Recipe
from pgolf_core.registry import create_manager, ordered_plugins
from pgolf_core.runlog import RunLog
from pgolf_core.train import Env, TrainState, export_model, load_weights, resolve_data


def load_checkpoint(
    path: str | Path, pm: Any = None, dtypes: dict[str, torch.dtype] | None = None
) -> dict[str, torch.Tensor]:
    """A raw state dict (`final_model.pt`, as the records save it), a pgolf/record int8 artifact, or
    an artifact in a format that one of `pm`'s plugins reads back (`pgolf_dequantize`: int6)."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    for codec in ("raw", "zlib", "zstd"):
        try:
            raw = data if codec == "raw" else artifact.decompress(data, codec)
            obj = artifact.deserialize(raw)
        except PgolfError:  # the codec's package is missing: say so, do not guess another format
            raise
        except Exception:  # noqa: BLE001 - try the next container format
            continue
        if pm is not None and isinstance(obj, dict):
            weights = pm.hook.pgolf_dequantize(obj=obj, dtypes=dtypes or {})
            if weights is not None:
                return weights
        if isinstance(obj, dict) and obj.get("__quant_format__") == "int8_clean_per_row_v1":
            return artifact.dequantize_int8(obj)
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    formats = "a state dict (torch.save), an int8 artifact (zlib/zstd), nor a format the recipe's plugins read"
    raise PgolfError(f"{path}: neither {formats}")


def check_matches(checkpoint: str | Path, live: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint of another model: name the keys one side lacks, or the first tensors whose
    shapes differ (a checkpoint of another size, or a recipe with other settings)."""
    only_model, only_ckpt = sorted(set(live) - set(weights)), sorted(set(weights) - set(live))
    if only_model or only_ckpt:
        raise PgolfError(
            f"{checkpoint}: keys do not match the recipe's model: missing {only_model[:5]}, "
            f"unexpected {only_ckpt[:5]} ({len(only_model)} missing, {len(only_ckpt)} unexpected)"
        )
    differ = [k for k in live if tuple(live[k].shape) != tuple(weights[k].shape)]
    if differ:
        shown = ", ".join(f"{k}: {tuple(weights[k].shape)} vs model {tuple(live[k].shape)}" for k in differ[:3])
        raise PgolfError(
            f"{checkpoint}: {len(differ)} tensors have other shapes than the recipe's model ({shown}); "
            "was it trained with other [model] settings?"
        )


def _setup(recipe: Recipe, log: Any) -> tuple[Any, Any, RunLog]:
    """The plugin manager, the configured run and a console-only log, as `train()` sets them up."""
    pm = create_manager(recipe)
    runlog = RunLog(None)
    runlog.log = lambda msg, console=True: log(msg)  # type: ignore[method-assign]
    return pm, configure(recipe, pm, log=log), runlog


def evaluate(
    recipe: Recipe, checkpoint: str | Path | None = None, model: torch.nn.Module | None = None, log: Any = print
) -> dict[str, Any]:
    """Score weights on the recipe's validation data (standard eval, plus sliding if configured), CPU/GPU."""
    env = Env(torch.device("cuda" if torch.cuda.is_available() and recipe.run.device != "cpu" else "cpu"))
    pm, run, runlog = _setup(recipe, log)
    _, val_files, tok = resolve_data(recipe, env, runlog)  # data first: it fails before any model is built
    sp = load_tokenizer_for(tok, recipe.model.vocab_size)
    check_shards(val_files, recipe.model.vocab_size)
    seq = recipe.eval.seq_len or recipe.train.train_seq_len
    val = load_validation_tokens(val_files, max(seq, recipe.train.train_seq_len), recipe.eval.max_tokens)
    if model is None:
        backend, why = resolve_backend(recipe.model.attention, env.device.type)
        log(f"attention_backend:{backend} ({why})")
        model = build_model_with(model_spec(recipe, run.control_patterns, backend), pm, recipe.run.seed)
        if env.is_cuda:  # the dtypes the run trained and scored in (bf16 rotary buffers and tables)
            apply_training_precision(model, run.control_patterns, recipe.train.fp32_embeddings)
    if checkpoint is not None:
        weights = load_checkpoint(checkpoint, pm, {k: v.dtype for k, v in model.state_dict().items()})
        check_matches(checkpoint, model.state_dict(), weights)
        load_weights(model, weights)
    model.to(env.device)
    tables = build_byte_tables(sp, recipe.model.vocab_size).to(env.device)
    rows = max(recipe.eval.batch_tokens // seq, 1)
    kw: dict[str, Any] = {"device": env.device, "autocast_dtype": torch.bfloat16 if env.is_cuda else None}
    std = evaluation.eval_standard(model, val, seq, rows, tables, **kw)
    out: dict[str, Any] = {"val_loss": std.val_loss, "val_bpb": std.val_bpb, "tokens": std.tokens}
    log(f"standard val_loss:{std.val_loss:.8f} val_bpb:{std.val_bpb:.8f}")
    e = recipe.eval
    if e.sliding_stride > 0:
        sl = evaluation.eval_sliding(
            model, val, seq, e.sliding_stride, e.sliding_batch_seqs, tables, tail=e.sliding_tail, **kw
        )
        out.update(sliding_val_loss=sl.val_loss, sliding_val_bpb=sl.val_bpb)
        log(f"sliding_window val_loss:{sl.val_loss:.8f} val_bpb:{sl.val_bpb:.8f}")
    return out


def export(recipe: Recipe, model: torch.nn.Module, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """Quantize and compress `model`'s weights as the recipe's plugins say; returns byte counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pm, run, runlog = _setup(recipe, log)
    env = Env(torch.device("cpu"))
    state = TrainState(
        recipe, model, Optimizers([], None), env, runlog, out_dir=out, control_patterns=run.control_patterns
    )
    exported = export_model(state, pm, out, ordered_plugins(pm))
    return {
        "path": str(exported.path),
        "model_bytes": exported.model_bytes,
        "code_bytes": exported.code_bytes,
        "artifact_bytes": exported.model_bytes + exported.code_bytes,
        "format": exported.label,
    }
