"""The setup phase, shared by `pgolf run`, `pgolf eval` and the Python API: where the run executes,
its plugins and export parts, its data, and its model with the parameter roles.

Each part checks its input as it goes, so bad input stops the run here, before anything is
trained or any output directory is touched.
"""

from __future__ import annotations

import os
import random
import timeit
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
import torch.distributed as dist

from pgolf_core.data.bpb import build_byte_tables, load_tokenizer
from pgolf_core.data.loader import load_validation_tokens
from pgolf_core.data.shards import check_shards, shard_files
from pgolf_core.model import GPT, ModelParts, ModelSpec, apply_training_precision, resolve_backend
from pgolf_core.recipe import grad_accum_steps
from pgolf_core.registry import Plugins, create_manager
from pgolf_core.types import Env, ParamRole, PgolfError, Recipe, collect_roles

# ---------------------------------------------------------------- before a run starts: memory and time
# A recipe sized for 8xH100 started on a 2-core CPU used to run for two minutes and then be killed by the kernel
# with no word from pgolf (exit 137, its lock left behind). Both estimates here are cheap, made before the data or
# the model exist, and refuse such a run with the figures and the fix; `force` runs it anyway. The memory estimate
# is checked against measured peaks in `benchmarks/bench_memory.py` (docs/benchmarks.md).

PROCESS_BYTES = 2**29  # torch, the tokenizer, the data and the allocator's slack: ~0.5 GiB measured
STATE_BYTES_PER_PARAM = 28  # fp32 weights, gradients, two optimizer moments, EMA, the warm-up's saved copies


def estimate(recipe: Recipe, world: int, accum: int, device: torch.device) -> tuple[int, int]:
    """(bytes one process needs, parameters of the core model). Float32 throughout (bf16 autocast on a GPU
    roughly halves the activations; this bound does not count on it):
    - the parameters' state;
    - one training micro-batch's tensors saved for the backward: per layer and token 6d + kv + 2 x hidden
      floats, per token 4 x vocab (logits, softcap, softmax, gradient), fitted to the full pr414 model's
      measured peaks (benchmarks/bench_memory.py);
    - one eval batch of sequences: their logits and, on a CPU (whose SDPA takes its math path for
      grouped-query attention), one layer's [heads, T, T] attention weights per sequence.
    Added, not maxed: memory a CPU process freed after training stays with it."""
    m, d, t, e = recipe.model, recipe.model.model_dim, recipe.train, recipe.eval
    hidden, kv, seq = m.mlp_hidden or int(m.mlp_mult * d), d // m.num_heads * m.num_kv_heads, e.seq_len or 0
    params = m.vocab_size * d * (2 - m.tie_embeddings) + 2 * m.num_layers * d * (d + kv + hidden)
    train = t.train_batch_tokens // (world * accum) * (m.num_layers * (6 * d + kv + 2 * hidden) + 4 * m.vocab_size)
    seq = seq or t.train_seq_len  # eval sequences: the standard eval's batch, or the sliding eval's windows
    windows = (e.max_tokens - seq) // e.sliding_stride + 1 if e.max_tokens and e.sliding_stride else seq
    seqs = max(e.batch_tokens // (world * accum * seq), min(e.sliding_batch_seqs, windows) if e.sliding_stride else 0)
    evals = seqs * seq * (4 * m.vocab_size + m.num_heads * seq * (device.type == "cpu"))
    return PROCESS_BYTES + STATE_BYTES_PER_PARAM * params + 4 * (train + evals), params


def preflight(recipe: Recipe, env: Env, force: bool, log: Callable[[str], None], cpu_flops: float = 0.0) -> None:
    """Refuse (exit 2) a run whose memory estimate exceeds this machine's RAM (or GPU memory), or whose warm-up
    and first step would take over an hour on this CPU (`cpu_flops`: its float32 matmul rate, measured when 0);
    with `force`, say so in the log and go on."""
    t, device, world = recipe.train, env.device, env.world_size
    accum = grad_accum_steps(t, world, recipe.source)
    need, params = estimate(recipe, world, accum, device)
    have, kind = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"
    if device.type == "cuda":
        have, kind = torch.cuda.get_device_properties(device).total_memory, "GPU memory"
    m = recipe.model
    problems = [
        f"[model] model_dim={m.model_dim} num_layers={m.num_layers} mlp_hidden={m.mlp_hidden} mlp_mult={m.mlp_mult} "
        f"vocab_size={m.vocab_size} with [train] train_batch_tokens={t.train_batch_tokens} need about "
        f"{need / 2**30:,.1f} GiB per process ({params:,} parameters, micro-batches of "
        f"{t.train_batch_tokens // (world * accum):,} tokens), more than the {have / 2**30:,.1f} GiB of {kind} "
        "here (train.grad_accum_steps shrinks the micro-batches)"
    ] * (need > have)
    if device.type == "cpu" and not cpu_flops:  # eight 512 x 512 float32 matmuls
        a = torch.randn(512, 512)
        cpu_flops = 8 * 2 * 512**3 / max(timeit.timeit(lambda: a @ a, number=8), 1e-9)
    step_s = 6.0 * params * t.train_batch_tokens / world / cpu_flops if cpu_flops else 0.0
    if step_s * (t.warmup_steps + 1) > 3600:
        problems.append(
            f"one step ({t.train_batch_tokens:,} tokens) takes about {step_s / 60:,.1f} min on this CPU, so its "
            f"{t.warmup_steps} warm-up steps and first step take ~{step_s * (t.warmup_steps + 1) / 3600:,.1f} h"
        )
    text = f"{recipe.source}: this machine cannot run this recipe: " + "; and ".join(problems)
    if problems and force:
        log(f"WARNING: --force: {text}")
    elif problems:
        raise PgolfError(f"{text}. Add --smoke for the same recipe at small size, or --force to run it anyway")


# ---------------------------------------------------------------- the model: the GPT, its slots filled by the plugins


def model_spec(recipe: Recipe, attention: str = "sdpa") -> ModelSpec:
    """The `[model]` settings the model needs (the same names), with the MLP width and the attention
    backend resolved and the training sequence length (for rotary scaling) added."""
    m = recipe.model
    shared = {f.name: getattr(m, f.name) for f in fields(ModelSpec) if f.init and hasattr(m, f.name)}
    shared.update(mlp_hidden=m.mlp_hidden or int(m.mlp_mult * m.model_dim), attention=attention)  # as the records
    return ModelSpec(**shared, train_seq_len=recipe.train.train_seq_len)


def build_model_with(spec: ModelSpec, pm: pluggy.PluginManager, seed: int) -> GPT:
    """Seeded CPU fp32 construction, then `pgolf_model_built` (init schemes). Collecting hooks'
    answers come without the Nones (pluggy drops them)."""
    spec.linear_factory = lambda role, i, o: pm.hook.pgolf_linear(spec=spec, role=role, in_features=i, out_features=o)
    parts = ModelParts(
        embed=lambda: pm.hook.pgolf_embed(spec=spec),
        value_extras=lambda: pm.hook.pgolf_value_extras(spec=spec),
        rotary=lambda layer: pm.hook.pgolf_rotary(spec=spec, layer=layer),
        attention_post=lambda layer: pm.hook.pgolf_attention_post(spec=spec, layer=layer),
        mlp=lambda layer: pm.hook.pgolf_mlp(spec=spec, layer=layer),
    )
    torch.manual_seed(seed)
    model = GPT(spec, parts)
    pm.hook.pgolf_model_built(model=model, spec=spec)
    return model


def build_model(recipe: Recipe, pm: pluggy.PluginManager | None = None) -> GPT:
    """The recipe's model on CPU in fp32 with its plugins applied; deterministic for `run.seed`."""
    pm = pm or create_manager(recipe)
    return build_model_with(model_spec(recipe), pm, recipe.run.seed)


# ---------------------------------------------------------------- where the run executes, its data, its model


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
