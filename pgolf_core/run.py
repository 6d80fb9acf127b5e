"""A training run as three phases, top to bottom like the records' `main()`:

    setup   preflight, environment, plugins, data, model, optimizers, compile   (`Run.__init__`)
    fit     untimed warm-up and restore, then the wallclock-capped loop        (`Run.fit`)
    finish  final weights, export, read back, round-trip and sliding evals, summary   (`Run.finish`)

The setup's parts come first (shared by `pgolf run`, `pgolf eval` and the Python API: each part checks its input
as it goes, so bad input stops the run there, before anything is trained or any output folder is touched), then
the run itself, then the library entry points that reuse them (`evaluate`, `export_artifact`).

Plugins act only at the phase boundaries named in `pgolf_core.hookspecs`; nothing of theirs runs
inside `forward`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from pgolf_core import evaluation, exporter, records
from pgolf_core.data import check
from pgolf_core.data.tokens import (
    Data,
    DistributedTokenLoader,
    build_byte_tables,
    check_shards,
    load_byte_sidecar,
    load_tokenizer,
    load_validation_tokens,
    shard_files,
)
from pgolf_core.model import GPT, ModelParts, ModelSpec, apply_training_precision, count_parameters, resolve_backend
from pgolf_core.optim import build_optimizers, lr_scale, muon_momentum
from pgolf_core.recipe import grad_accum_steps
from pgolf_core.registry import Plugins, create_manager, noncompliance, plugin_parts
from pgolf_core.types import (
    Env,
    ExportContext,
    PgolfError,
    Recipe,
    Roles,
    RunFault,
    TrainState,
    ValChunk,
    collect_roles,
)

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
    m, resolved = recipe.model, {"attention": attention, "train_seq_len": recipe.train.train_seq_len}
    hidden = m.mlp_hidden or int(m.mlp_mult * m.model_dim)  # as the records
    return ModelSpec(**{**dataclasses.asdict(m), **resolved, "mlp_hidden": hidden})


def build_model_with(spec: ModelSpec, pm: pluggy.PluginManager, seed: int) -> GPT:
    """Seeded CPU fp32 construction, then `pgolf_model_built` (init schemes). Collecting hooks'
    answers come without the Nones (pluggy drops them)."""
    linear = lambda role, i, o: pm.hook.pgolf_linear(spec=spec, role=role, in_features=i, out_features=o)  # noqa: E731
    spec = dataclasses.replace(spec, linear_factory=linear)  # the caller's spec is left as it was
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
    return build_model_with(model_spec(recipe), pm or create_manager(recipe), recipe.run.seed)


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


def load_data(recipe: Recipe, env: Env, log: Any, train: bool = True) -> Data:
    """The recipe's shards and tokenizer (the embedded sample data when `data.path` is empty), checked,
    the validation tokens and the byte tables."""
    cfg = recipe.data
    if not cfg.path:
        from pgolf_core.data.build import ensure_sample_data

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
    sidecars = shard_files(root, cfg.val_bytes_pattern, True) if cfg.val_bytes_pattern else []
    check.guard(root, train_files + val_files, sidecars, tokenizer, log)
    if sidecars:  # BPB's bytes: the original text's, from the sidecars (CaseOps)
        tables: Any = load_byte_sidecar(sidecars, val_files, val, sp.bos_id())
    else:
        tables = build_byte_tables(sp, recipe.model.vocab_size)
    return Data(train_files, tokenizer, val, tables.to(env.device), seq)


def build(recipe: Recipe, plugins: Plugins, env: Env, log: Any) -> tuple[GPT, Roles]:
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


# ---------------------------------------------------------------- the run: setup, fit, finish


def train(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    plugin_dirs: tuple = (),
    interactive: bool | None = None,
    clock: Callable[[], float] = time.perf_counter,
    force: bool = False,
) -> dict[str, Any]:
    """Run a recipe end to end and return its summary (also written to `out_dir/summary.json`).

    A directory holding a finished run is refused unless `overwrite`; the directory is claimed
    (locked, cleared) only after plugins, data, tokenizer, model and optimizers were set up, so bad
    input never touches it. `clock` (seconds) times the training loop, which the wallclock cap and
    the time-based warmdown follow; tests inject a fake one to exercise the cap without waiting.
    """
    claim, run = records.Claim(), None
    try:
        run = Run(recipe, out_dir, overwrite, plugin_dirs, interactive, force)
        if run.env.rank == 0:  # every check passed: now the directory is locked, cleared and written
            claim.take(run.out, overwrite, run.log.log)
            run.log.attach(run.out)
        run.fit(clock)
        return run.finish()
    finally:
        if run is not None:
            run.log.stop_progress()
        claim.release()


class Run:
    """One run's parts, made by setup and used by fit and finish."""

    def __init__(
        self, recipe: Recipe, out_dir: Any, overwrite: bool, plugin_dirs: tuple, interactive: Any, force: bool = False
    ) -> None:
        self.t_start = time.perf_counter()
        self.recipe, cfg = recipe, recipe.train
        env = setup_env(recipe.run.device)
        self.log = log = records.RunLog(None, env.rank, interactive)
        self.env = env = dataclasses.replace(env, on_batch=log.eval_batch)  # evaluations move the progress display
        self.out = Path(out_dir) if out_dir else records.default_out(recipe)
        records.check_free(self.out, overwrite)  # reads only; the directory is claimed after setup
        preflight(recipe, env, force, log.log)
        self.plugins = plugin_parts(recipe, plugin_dirs)
        for plugin in self.plugins.ordered:  # each plugin's settings, as the resolved recipe has them
            settings = [f"{k}:{v}" for k, v in recipe.to_dict()["plugins"][plugin.name].items() if k != "enabled"]
            log.log(f"{plugin.name}: {' '.join(settings) or '(no settings)'}")
        self.data = data = load_data(recipe, env, log.log)
        log.log(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={data.tokenizer_path}")
        log.log(f"train_loader:dataset:{data.train_files[0].parent.name} train_shards:{len(data.train_files)}")
        log.log(f"val_loader:shards pattern={recipe.data.val_pattern} tokens:{data.val_tokens.numel() - 1}")
        self.base, roles = build(recipe, self.plugins, env, log.log)
        use_compile = recipe.run.compile == "on" or (recipe.run.compile == "auto" and env.is_cuda)
        model: Any = torch.compile(self.base, dynamic=False, fullgraph=True) if use_compile else self.base
        ids = [env.device.index] if env.is_cuda else None
        self.model: torch.nn.Module = DDP(model, device_ids=ids, broadcast_buffers=False) if env.distributed else model
        self.optimizers = optimizers = build_optimizers(self.base, cfg, roles, env.device.type)
        if optimizers.muon is not None and use_compile:
            optimizers.muon.orthogonalize = torch.compile(optimizers.muon.orthogonalize)  # keeps muon_ns_dtype
        self.accum = grad_accum_steps(recipe.train, env.world_size, recipe.source)
        log.log(f"model_params:{count_parameters(self.base)}")
        log.log(f"world_size:{env.world_size} grad_accum_steps:{self.accum} device:{env.device} compile:{use_compile}")
        log.log(f"plugins:{','.join(p.name for p in self.plugins.ordered) or '-'}")
        log.log(
            f"train_batch_tokens:{cfg.train_batch_tokens} train_seq_len:{cfg.train_seq_len} "
            f"iterations:{cfg.iterations} warmup_steps:{cfg.warmup_steps} "
            f"max_wallclock_seconds:{cfg.max_wallclock_seconds:.3f}"
        )
        log.log(f"seed:{recipe.run.seed}")
        self.state = TrainState(recipe, self.base, optimizers, env, roles, on_report=self.on_report)
        self.val_rows = eval_rows(recipe, env)
        if noncompliant := noncompliance(self.plugins.pm):
            log.log(f"WARNING: eval not compliant: {noncompliant}")

    def on_report(self, key: str, value: Any, step: int) -> None:
        """A plugin's `report(key, value)`: a log line and a metric."""
        self.log.log(f"{key}:{value}")
        self.log.metric(event="plugin", step=step, key=key, value=value)

    def evaluate(self, model: torch.nn.Module) -> evaluation.EvalResult:
        d = self.data
        self.log.eval_phase("validation")
        return evaluation.eval_standard(model, d.val_tokens, d.eval_seq, self.val_rows, d.tables, self.env)

    def train_step(self, loader: DistributedTokenLoader) -> torch.Tensor:
        """One optimizer step over `accum` micro-batches; DDP syncs gradients on the last one only."""
        cfg, opt = self.recipe.train, self.optimizers
        opt.zero_grad()
        loss_sum = torch.zeros((), device=self.env.device)
        for micro in range(self.accum):
            if self.env.distributed:
                self.model.require_backward_grad_sync = micro == self.accum - 1  # type: ignore[assignment]
            x, y = loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, self.accum)
            with self.env.autocast():
                loss = self.model(x, y)
            loss_sum += loss.detach()
            (loss / self.accum).backward()
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.base.parameters(), cfg.grad_clip_norm)
        opt.step()
        opt.zero_grad()
        return loss_sum / self.accum

    def new_loader(self) -> DistributedTokenLoader:
        return DistributedTokenLoader(self.data.train_files, self.env.rank, self.env.world_size, self.env.device)

    def warm_up(self) -> None:
        """Untimed steps (compilation, autotuning), then weights, optimizer and loader restored."""
        cfg, opt = self.recipe.train, self.optimizers
        initial_model = {k: v.detach().cpu().clone() for k, v in self.base.state_dict().items()}
        initial_opt = [copy.deepcopy(o.state_dict()) for o in opt.all]
        self.model.train()
        loader = self.new_loader()
        for phase in range(len(self.base.layer_orders)):  # each layer schedule compiled before the timed loop
            self.base.layer_phase = phase
            for i in range(cfg.warmup_steps):
                self.train_step(loader)
                if cfg.warmup_steps <= 20 or (i + 1) % 10 == 0 or i + 1 == cfg.warmup_steps:
                    self.log.log(f"warmup_step:{i + 1}/{cfg.warmup_steps}" + f" layer_phase:{phase}" * (phase > 0))
        self.base.load_state_dict(initial_model, strict=True)
        for o, state in zip(opt.all, initial_opt, strict=True):
            o.load_state_dict(state)

    def fit(self, clock: Callable[[], float]) -> None:
        """The loop: periodic validation (the timer pauses), hooks around each step, a warmdown that
        follows elapsed time, a stop at a non-finite loss and at the wallclock cap."""
        cfg, env, log, state, hook = self.recipe.train, self.env, self.log, self.state, self.plugins.pm.hook
        if cfg.warmup_steps > 0:
            self.warm_up()
        self.base.layer_phase = 0  # training starts with the plain order (a built model may hold another)
        loader = self.new_loader()
        cap_ms = 1000.0 * cfg.max_wallclock_seconds if cfg.max_wallclock_seconds > 0 else None
        training_ms, stop_after, step, last_loss, self.step_times = 0.0, None, 0, None, []
        log.start_progress(cfg.iterations, cfg.max_wallclock_seconds)
        env.sync()
        t0 = clock()
        while True:
            # Validate every val_loss_every steps and at the end, with the training clock stopped.
            last_step = step == cfg.iterations or (stop_after is not None and step >= stop_after)
            if last_step or (cfg.val_loss_every > 0 and step % cfg.val_loss_every == 0):
                env.sync()
                training_ms += 1000.0 * (clock() - t0)
                self.last_val = val = self.evaluate(self.model)
                log.log(
                    f"step:{step}/{cfg.iterations} val_loss:{val.val_loss:.4f} val_bpb:{val.val_bpb:.4f} "
                    f"train_time:{training_ms:.0f}ms step_avg:{training_ms / max(step, 1):.2f}ms"
                )
                log.metric(
                    event="val", step=step, val_loss=val.val_loss, val_bpb=val.val_bpb, train_time_ms=training_ms
                )
                env.sync()
                t0 = clock()
            if last_step and step < cfg.iterations:  # only the wallclock cap stops a run before its last step
                log.log(f"stopping_early: wallclock_cap train_time:{training_ms:.0f}ms step:{step}/{cfg.iterations}")
            if last_step:
                break
            # One step: schedules from elapsed time, then the step hooks around the optimizer step.
            state.step, state.elapsed_ms = step, training_ms + 1000.0 * (clock() - t0)
            state.lr_scale = lr_scale(step, state.elapsed_ms, cfg)
            hook.pgolf_step_start(state=state)
            self.optimizers.set_lr_scale(state.lr_scale)
            self.optimizers.set_muon_momentum(muon_momentum(step, cfg))
            train_loss = self.train_step(loader)
            step += 1
            self.stop_if_diverged(step, train_loss, last_loss)
            last_loss, state.step = train_loss, step
            hook.pgolf_post_step(state=state)
            # Log the loss (mean over ranks) now and then, and stop every rank at the wallclock cap.
            self.step_times.append(training_ms + 1000.0 * (clock() - t0) - state.elapsed_ms)
            approx_ms = state.elapsed_ms + self.step_times[-1]
            if cfg.train_log_every > 0 and (step <= 10 or step % cfg.train_log_every == 0 or stop_after is not None):
                if env.distributed:  # the loss of the global batch, not rank 0's share (gloo has no AVG)
                    dist.all_reduce(train_loss, op=dist.ReduceOp.SUM)
                    train_loss /= env.world_size
                loss = train_loss.item()
                log.log(
                    f"step:{step}/{cfg.iterations} train_loss:{loss:.4f} "
                    f"train_time:{approx_ms:.0f}ms step_avg:{approx_ms / step:.2f}ms"
                )
                log.metric(event="train", step=step, train_loss=loss, train_time_ms=approx_ms, lr_scale=state.lr_scale)
                log.update_progress(step, loss, cfg.train_batch_tokens * step / max(approx_ms / 1e3, 1e-9), approx_ms)
            log.update_progress(step)
            if stop_after is None and cap_ms is not None and self.any_rank(approx_ms >= cap_ms):
                stop_after = step
        if env.is_cuda:
            log.log(
                f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB "
                f"reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB"
            )
        self.seconds = {"train": training_ms / 1000.0}
        hook.pgolf_fit_end(state=state)

    def any_rank(self, flag: bool | torch.Tensor) -> bool:
        """True on every rank when it is true on one (every rank must ask); one host sync, after the all-reduce."""
        if not self.env.distributed:
            return bool(flag)
        t = torch.as_tensor(flag, device=self.env.device).to(torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def stop_if_diverged(self, step: int, loss: torch.Tensor, last: Any) -> None:
        """One host sync a step: a NaN/inf loss stops every rank at once, with a summary saying so."""
        if not self.any_rank(~torch.isfinite(loss)):
            return
        previous = None if last is None else float(last.item())
        summary, msg = records.diverged(self.recipe.run.name, self.recipe.run.seed, step, loss.item(), previous)
        self.log.stop_progress()
        self.log.log(f"stopping: {msg}")
        if self.env.rank == 0:
            records.write_json_atomic(self.out / "summary.json", summary)
        raise RunFault(f"{msg} (its summary is in {self.out})")

    def finish(self) -> dict[str, Any]:
        """Final weights, export and read back through `pgolf eval`'s reader, evals, summary."""
        recipe, env, log, state, pm = self.recipe, self.env, self.log, self.state, self.plugins.pm
        t_eval = time.perf_counter()
        log.eval_phase("final eval")
        final = pm.hook.pgolf_final_weights(state=state)
        if final is not None:  # EMA/SWA: score exactly the weights that are exported
            load_weights(self.base, final)
            self.last_val = self.evaluate(self.model)
            log.log(f"final_weights val_loss:{self.last_val.val_loss:.4f} val_bpb:{self.last_val.val_bpb:.4f}")
        t_export = time.perf_counter()  # `final_model.pt` (raw weights), then the artifact `final_model.ptz`
        weights = {k: v.detach().to("cpu").contiguous() for k, v in self.base.state_dict().items()}
        if env.rank == 0:
            exporter.write_atomic(self.out / "final_model.pt", exporter.serialize(weights))
        ctx = ExportContext(recipe, state.roles, state.report)
        self.written, self.code_bytes = write_export(self.plugins, weights, ctx, self.out, log.log, env.rank == 0)
        self.seconds["export"] = time.perf_counter() - t_export
        env.barrier()
        live = self.base.state_dict()
        trained, dtypes = [k for k, v in live.items() if v.any()], {k: v.dtype for k, v in live.items()}
        weights = exporter.read_artifact(self.plugins.export, self.written.path, dtypes, recipe.export.compressor)
        # A tensor the export rounded to all zeros (a barely trained projection under a scale floor) is missing
        # from the scored model: say so, since a comparison of such runs cannot see what acts through it.
        self.zeroed = sorted(k for k in trained if not weights[k].any())
        if self.zeroed:
            log.log(f"WARNING: export: {len(self.zeroed)} tensors quantized to all zeros: {', '.join(self.zeroed)}")
        load_weights(self.base, weights)
        models, rows, label = (self.model, self.base), self.val_rows, self.written.label
        self.roundtrip, self.sliding = score(recipe, pm, self.data, models, env, rows, log.log, state.report, label)
        self.seconds.update(eval=time.perf_counter() - t_eval, total=time.perf_counter() - self.t_start)
        summary = records.summarize(self)
        if env.rank == 0:
            resolved = records.resolved_recipe_text(recipe, self.plugins.ordered, summary)
            exporter.write_atomic(self.out / "recipe.resolved.toml", resolved.encode("utf-8"))
            records.print_summary(summary, log, self.out)
            records.write_json_atomic(self.out / "summary.json", summary)
        if env.distributed:
            dist.destroy_process_group()
        return summary


def score(
    recipe: Recipe,
    pm: Any,
    data: Data,
    models: tuple,
    env: Env,
    rows: int,
    log: Any,
    report: Callable[[str, Any], None],
    label: str,
) -> tuple[evaluation.EvalResult, evaluation.EvalResult | None]:
    """The final scores of a run and of `pgolf eval`: round trip, then sliding window if configured or
    if a plugin adapts at eval time (its windows are then the rows, stride = seq_len); pre-scoring
    adaptation first, then chunk by chunk, each chunk scored before `pgolf_eval_adapt` trains on it.
    `models`: (the model that scores the round trip, e.g. compiled; the uncompiled one the hooks adapt)."""
    e, d, (scorer, base) = recipe.eval, data, models
    rt = evaluation.eval_standard(scorer, d.val_tokens, d.eval_seq, rows, d.tables, env)
    log_score(log, f"final_{label}_roundtrip", rt)
    adapters = [impl.plugin_name for impl in pm.hook.pgolf_eval_adapt.get_hookimpls()]
    if e.sliding_stride <= 0 and not adapters and not noncompliance(pm):
        return rt, None
    if noncompliance(pm):
        t0, tokens = time.perf_counter(), d.val_tokens.to(device=env.device, dtype=torch.int64)
        pm.hook.pgolf_eval_prescore(model=base, chunk=ValChunk(tokens, 0, 1, env, False, report, d.eval_seq))
        report("eval/prescore_seconds", time.perf_counter() - t0)
    adapt = None
    if adapters:
        log(f"eval_adapt: {','.join(adapters)} after each scored chunk of {e.chunk_tokens} tokens")

        def adapt(chunk: ValChunk) -> None:
            chunk.report = report
            pm.hook.pgolf_eval_adapt(model=base, chunk=chunk)

    stride = e.sliding_stride or d.eval_seq
    args = (d.val_tokens, d.eval_seq, stride, e.sliding_batch_seqs, d.tables, env, e.sliding_tail, adapt)
    sl = evaluation.eval_sliding(base, *args, e.chunk_tokens)
    log_score(log, f"final_{label}_sliding_window", sl, f"stride:{stride} ")
    if noncompliance(pm):
        log(f"WARNING: eval not compliant: {noncompliance(pm)}")
    return rt, sl


def log_score(log: Any, name: str, r: evaluation.EvalResult, extra: str = "") -> None:
    """The records' two lines per final score (rounded, then `_exact`)."""
    log(f"{name} val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f} {extra}eval_time:{1000 * r.seconds:.0f}ms")
    log(f"{name}_exact val_loss:{r.val_loss:.8f} val_bpb:{r.val_bpb:.8f}")


# ---------------------------------------------------------------- library entry points beyond training
# Evaluate a checkpoint, export weights to an artifact: both reuse the run's setup and the run's export reader and
# writer, so a score or an artifact made here equals the one `pgolf run` makes.


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
            obj = exporter.deserialize(path.read_bytes())  # an uncompressed torch.save
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


def write_export(
    plugins: Plugins, weights: dict[str, torch.Tensor], ctx: ExportContext, out: Path, log: Any, rank0: bool = True
) -> tuple[exporter.Written, int]:
    """`out/final_model.ptz` as the recipe's plugins say, its sizes and the code's logged as the records log them;
    (what was written, the code bytes)."""
    written = exporter.write_artifact(plugins.export, plugins.pm, weights, ctx, out / "final_model.ptz", rank0)
    code_bytes, files = exporter.code_size(plugins.ordered)
    fmt, total = written.label.replace("_", "+", 1), written.model_bytes + code_bytes
    log(f"Serialized model {fmt}: {written.model_bytes} bytes (raw_torch:{written.raw_bytes})")
    log(f"Code size: {code_bytes} bytes ({files} files: core + enabled plugins)")
    log(f"Total submission size {fmt}: {total} bytes")
    if total > (limit := ctx.recipe.export.artifact_limit_bytes):
        log(f"WARNING: artifact {total} bytes is over the {limit:,}-byte limit")
    return written, code_bytes


def export_artifact(
    recipe: Recipe, model: torch.nn.Module, out_dir: str | Path, log: Any = print, plugin_dirs: tuple = ()
) -> dict[str, Any]:
    """Quantize and compress `model`'s weights as the recipe's plugins say (`plugin_dirs`: local plugin
    files, as for `evaluate`), logging the sizes as a run does; returns byte counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plugins, reports = plugin_parts(recipe, plugin_dirs), dict[str, Any]()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    ctx = ExportContext(recipe, collect_roles(model), reports.__setitem__)
    written, code_bytes = write_export(plugins, weights, ctx, out, log)
    return {
        "path": str(written.path),
        "model_bytes": written.model_bytes,
        "code_bytes": code_bytes,
        "artifact_bytes": written.model_bytes + code_bytes,
        "format": written.label,
        "reports": reports,
    }
