"""Before a run starts: does this machine hold it in memory, and does it finish its warm-up in an hour?

A recipe sized for 8xH100 started on a 2-core CPU used to run for two minutes and then be killed by
the kernel with no word from pgolf (exit 137, its lock left behind). Both estimates here are cheap,
made before the data or the model exist, and refuse such a run with the figures and the fix; `force`
runs it anyway. The memory estimate is checked against measured peaks in `benchmarks/bench_memory.py`
(docs/benchmarks.md).
"""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable

import torch

from pgolf_core.recipe import grad_accum_steps
from pgolf_core.types import Env, PgolfError, Recipe

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


def check(recipe: Recipe, env: Env, force: bool, log: Callable[[str], None], cpu_flops: float = 0.0) -> None:
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
