"""The setup phase, shared by `pgolf run`, `pgolf eval` and the Python API: where the run executes,
its plugins and export parts, its data, and its model with the parameter roles.

Each part checks its input as it goes, so bad input stops the run here, before anything is
trained or any output directory is touched.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pgolf_core.build import build_model_with, model_spec
from pgolf_core.data.bpb import build_byte_tables, load_tokenizer
from pgolf_core.data.loader import load_validation_tokens
from pgolf_core.data.shards import check_shards, shard_files
from pgolf_core.model import GPT, apply_training_precision, resolve_backend
from pgolf_core.recipe import grad_accum_steps
from pgolf_core.registry import Plugins
from pgolf_core.roles import collect_roles
from pgolf_core.types import Env, ParamRole, PgolfError, Recipe


def setup_env(device_pref: str) -> Env:
    """Where the run executes, from torchrun's environment: NCCL on CUDA, gloo on CPU; bf16 autocast on CUDA."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise PgolfError('[run] device = "cuda" but no CUDA device is available; use "auto" or "cpu"')
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        # Subnormal floats (|x| < 1.2e-38, e.g. in gradients of near-zero gates and in Newton-Schulz on
        # them) take microcode paths on x86 that made smoke steps 3x slower; flushing them to zero
        # changes nothing above 1e-38 and matches what GPUs do in bf16.
        torch.set_flush_denormal(True)
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Env(device, rank, world, torch.bfloat16 if use_cuda else None, distributed)


def eval_rows(recipe: Recipe, env: Env) -> int:
    """Sequences per eval batch on each rank, as the records split `eval.batch_tokens` (over ranks
    and accumulation steps); `pgolf eval` uses the same, so it scores the run's batches exactly."""
    accum = grad_accum_steps(recipe.train, env.world_size, recipe.source)
    per_rank = recipe.eval.batch_tokens // (env.world_size * accum)
    return max(per_rank // (recipe.eval.seq_len or recipe.train.train_seq_len), 1)


@dataclass
class Data:
    """The shards, the tokenizer, the validation tokens and the BPB byte tables."""

    train_files: list[Path]
    tokenizer_path: Path
    val_tokens: torch.Tensor
    tables: Any
    eval_seq: int


def load_data(recipe: Recipe, env: Env, log: Any, train: bool = True) -> Data:
    """The recipe's shards and tokenizer (the embedded sample data when `data.path` is empty), checked,
    the validation tokens and the byte tables."""
    cfg = recipe.data
    if not cfg.path:
        from pgolf_core.data.sample import ensure_sample_data

        if env.rank != 0:  # rank 0 builds the sample data, the others wait for it
            env.barrier()
        sample = ensure_sample_data(log=log)
        if env.rank == 0:
            env.barrier()
        root, candidates = Path(sample.path), [Path(cfg.tokenizer or sample.tokenizer)]
    else:
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise PgolfError(
                f"[data] path: {root} is not a directory (expected the folder of the shards, e.g. "
                "data/datasets/fineweb10B_sp1024 from `pgolf data fineweb`)"
            )
        official = root.parent.parent / "tokenizers" / "fineweb_1024_bpe.model"
        candidates = [Path(cfg.tokenizer).expanduser()] if cfg.tokenizer else [root / "tokenizer.model", official]
    tokenizer = next((c for c in candidates if c.is_file()), candidates[0])
    if cfg.path and not tokenizer.is_file():
        raise PgolfError(
            f"[data] tokenizer not found (looked at {', '.join(map(str, candidates))}); "
            "set data.tokenizer to the SentencePiece .model used to make the shards"
        )
    train_files, val_files = shard_files(root, cfg.train_pattern), shard_files(root, cfg.val_pattern)
    sp = load_tokenizer(tokenizer, recipe.model.vocab_size)
    for files in (train_files, val_files) if train else (val_files,):
        check_shards(files, recipe.model.vocab_size)
    seq = recipe.eval.seq_len or recipe.train.train_seq_len
    val = load_validation_tokens(val_files, max(recipe.train.train_seq_len, seq), recipe.eval.max_tokens)
    tables = build_byte_tables(sp, recipe.model.vocab_size).to(env.device)
    return Data(train_files, tokenizer, val, tables, seq)


def build(recipe: Recipe, plugins: Plugins, env: Env, log: Any) -> tuple[GPT, dict[str, ParamRole]]:
    """The model on CPU in fp32 with the plugins' modules, its roles collected once, then moved and
    (on GPU) cast to the records' precision: bf16 but Linear weights and control tensors fp32."""
    backend, why = resolve_backend(recipe.model.attention, env.device.type)
    log(f"attention_backend:{backend} ({why})")
    random.seed(recipe.run.seed)
    np.random.seed(recipe.run.seed)
    model = build_model_with(model_spec(recipe, backend), plugins.pm, recipe.run.seed)
    roles = collect_roles(model)
    model.to(env.device)
    if env.is_cuda:
        apply_training_precision(model, roles, recipe.train.fp32_embeddings)
    return model, roles


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a state dict, casting each tensor to the live parameter's dtype and device."""
    live = model.state_dict()
    model.load_state_dict({k: v.to(live[k]) for k, v in weights.items()}, strict=True)  # Tensor.to(other)
