"""The training run, top to bottom like the records' `main()`: set up, build, compile, untimed
warm-up and restore, wallclock-capped loop, final weights, export, round-trip eval, summary.

Plugins act only at the phase boundaries below (configure, build, step start/end, final
weights, pre-export/quantize/compress, eval adapt); nothing of theirs runs inside `forward`.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from pgolf_core import artifact, evaluation, manifest, rundir
from pgolf_core.attention import resolve_backend
from pgolf_core.build import build_model_with, configure, model_spec
from pgolf_core.data.bpb import build_byte_tables, load_tokenizer_for
from pgolf_core.data.loader import DistributedTokenLoader, load_validation_tokens
from pgolf_core.data.shards import check_shards, shard_files
from pgolf_core.errors import PgolfError
from pgolf_core.model import apply_training_precision, count_parameters
from pgolf_core.optim import Optimizers, build_optimizers, lr_scale, muon_momentum
from pgolf_core.recipe import Recipe
from pgolf_core.registry import create_manager, ordered_plugins
from pgolf_core.runlog import RunLog, write_json_atomic


@dataclass
class Env:
    """Where the run executes: device, precision and the process group."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    distributed: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.is_cuda else nullcontext()

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


@dataclass
class TrainState:
    """What step/export hooks see. `report(key, value)` logs `key:value` and records a metric."""

    recipe: Recipe
    model: torch.nn.Module  # the uncompiled base model (its parameters are the trained ones)
    optimizers: Optimizers
    env: Env
    log: RunLog
    step: int = 0
    lr_scale: float = 1.0
    elapsed_ms: float = 0.0
    out_dir: Path | None = None
    control_patterns: list[str] = field(default_factory=list)  # core + what plugins appended
    reports: dict[str, Any] = field(default_factory=dict)

    def report(self, key: str, value: Any) -> None:
        self.reports[key] = value
        self.log.log(f"{key}:{value}")
        self.log.metric(event="plugin", step=self.step, key=key, value=value)


def setup_env(device_pref: str) -> Env:
    """Read torchrun's environment; NCCL on CUDA, gloo on CPU."""
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
    return Env(device=device, rank=rank, world_size=world, distributed=distributed)


def grad_accum_steps(recipe: Recipe, world_size: int) -> int:
    if recipe.train.grad_accum_steps > 0:
        return recipe.train.grad_accum_steps
    if 8 % world_size:
        raise PgolfError(f"world size {world_size} must divide 8 (or set train.grad_accum_steps explicitly)")
    return 8 // world_size


def resolve_data(recipe: Recipe, env: Env, log: RunLog) -> tuple[list[Path], list[Path], Path]:
    """The recipe's shards and tokenizer; the embedded sample data when `data.path` is empty."""
    cfg = recipe.data
    if not cfg.path:
        from pgolf_core.data.sample import ensure_sample_data

        if env.rank != 0:
            env.barrier()
        sample = ensure_sample_data(log=log.log)
        if env.rank == 0:
            env.barrier()
        root, tokenizer = Path(sample.path), Path(cfg.tokenizer or sample.tokenizer)
    else:
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise PgolfError(
                f"[data] path: {root} is not a directory (expected the folder of the shards, e.g. "
                "data/datasets/fineweb10B_sp1024 from `pgolf data fineweb`)"
            )
        candidates = (
            [Path(cfg.tokenizer).expanduser()]
            if cfg.tokenizer
            else [root / "tokenizer.model", root.parent.parent / "tokenizers" / "fineweb_1024_bpe.model"]
        )
        tokenizer = next((c for c in candidates if c.is_file()), candidates[0])
        if not tokenizer.is_file():
            raise PgolfError(
                f"[data] tokenizer not found (looked at {', '.join(map(str, candidates))}); "
                "set data.tokenizer to the SentencePiece .model used to make the shards"
            )
    return shard_files(root, cfg.train_pattern), shard_files(root, cfg.val_pattern), tokenizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def train(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    plugin_dirs: tuple = (),
    interactive: bool | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Run a recipe end to end and return its summary (also written to `out_dir/summary.json`).

    A directory holding a finished run is refused unless `overwrite`; the directory is claimed
    (locked, cleared) only after plugins, data, tokenizer, model and optimizers were set up, so bad
    input never touches it. `clock` (seconds) times the training loop, which the wallclock cap and
    the time-based warmdown follow; tests inject a fake one to exercise the cap without waiting.
    """
    claim = rundir.Claim()
    try:
        return _train(recipe, out_dir, claim, overwrite, plugin_dirs, interactive, clock)
    finally:
        claim.release()


def _train(
    recipe: Recipe,
    out_dir: str | Path | None,
    claim: rundir.Claim,
    overwrite: bool,
    plugin_dirs: tuple,
    interactive: bool | None,
    clock: Callable[[], float],
) -> dict[str, Any]:
    t_start = time.perf_counter()
    env = setup_env(recipe.run.device)
    out = Path(out_dir) if out_dir else Path(recipe.run.out_dir) / f"{recipe.run.name}-seed{recipe.run.seed}"
    rundir.check_free(out, overwrite)  # reads only; the directory is claimed after setup
    log = RunLog(None, env.rank, interactive)
    cfg = recipe.train

    # Plugins, data, tokenizer and the BPB byte tables.
    pm = create_manager(recipe, plugin_dirs)
    plugins = ordered_plugins(pm)
    run = configure(recipe, pm, log=log.log)
    artifact.require_codec(recipe.export.compressor)
    train_files, val_files, tokenizer_path = resolve_data(recipe, env, log)
    sp = load_tokenizer_for(tokenizer_path, recipe.model.vocab_size)
    check_shards(train_files, recipe.model.vocab_size), check_shards(val_files, recipe.model.vocab_size)
    eval_seq = recipe.eval.seq_len or cfg.train_seq_len
    val_tokens = load_validation_tokens(val_files, max(cfg.train_seq_len, eval_seq), recipe.eval.max_tokens)
    tables = build_byte_tables(sp, recipe.model.vocab_size).to(env.device)
    log.log(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={tokenizer_path}")
    log.log(f"train_loader:dataset:{train_files[0].parent.name} train_shards:{len(train_files)}")
    log.log(f"val_loader:shards pattern={recipe.data.val_pattern} tokens:{val_tokens.numel() - 1}")

    # Model: built on CPU in fp32 with the plugins' modules, then moved, cast and compiled.
    backend, why = resolve_backend(recipe.model.attention, env.device.type)
    log.log(f"attention_backend:{backend} ({why})")
    seed_everything(recipe.run.seed)
    base_model = build_model_with(model_spec(recipe, run.control_patterns, backend), pm, recipe.run.seed)
    base_model.to(env.device)
    if env.is_cuda:
        apply_training_precision(base_model, run.control_patterns, cfg.fp32_embeddings)
    use_compile = recipe.run.compile == "on" or (recipe.run.compile == "auto" and env.is_cuda)
    compiled: Any = torch.compile(base_model, dynamic=False, fullgraph=True) if use_compile else base_model
    model: torch.nn.Module = (
        DDP(compiled, device_ids=[env.device.index] if env.is_cuda else None, broadcast_buffers=False)
        if env.distributed
        else compiled
    )
    optimizers = build_optimizers(base_model, cfg, run.control_patterns, env.device.type)
    if optimizers.muon is not None and use_compile:
        optimizers.muon.orthogonalize = torch.compile(optimizers.muon.orthogonalize)  # keeps muon_ns_dtype
    accum = grad_accum_steps(recipe, env.world_size)
    n_params = count_parameters(base_model)
    log.log(f"model_params:{n_params}")
    log.log(f"world_size:{env.world_size} grad_accum_steps:{accum} device:{env.device} compile:{use_compile}")
    log.log(f"plugins:{','.join(p.name for p in plugins) or '-'}")
    log.log(
        f"train_batch_tokens:{cfg.train_batch_tokens} train_seq_len:{cfg.train_seq_len} "
        f"iterations:{cfg.iterations} warmup_steps:{cfg.warmup_steps} "
        f"max_wallclock_seconds:{cfg.max_wallclock_seconds:.3f}"
    )
    log.log(f"seed:{recipe.run.seed}")
    if not env.is_cuda:
        manifest.warn_if_full_scale_on_cpu(recipe, n_params, accum, log.log)

    if env.rank == 0:  # every check passed: now the directory is locked, cleared and written
        claim.take(out, overwrite, log.log)
        log.attach(out)
    state = TrainState(recipe, base_model, optimizers, env, log, out_dir=out, control_patterns=run.control_patterns)
    val_rows = max(recipe.eval.batch_tokens // (env.world_size * accum) // eval_seq, 1)
    bf16 = torch.bfloat16 if env.is_cuda else None  # where each rank scores: the evaluators' keyword arguments
    where: dict[str, Any] = dict(device=env.device, rank=env.rank, world_size=env.world_size, autocast_dtype=bf16)

    def run_eval(m: torch.nn.Module, after_chunk: Any = None) -> evaluation.EvalResult:
        return evaluation.eval_standard(m, val_tokens, eval_seq, val_rows, tables, after_chunk=after_chunk, **where)

    def train_step(loader: DistributedTokenLoader) -> torch.Tensor:
        optimizers.zero_grad()
        loss_sum = torch.zeros((), device=env.device)
        for micro in range(accum):
            if env.distributed:
                model.require_backward_grad_sync = micro == accum - 1  # type: ignore[assignment]
            x, y = loader.next_batch(cfg.train_batch_tokens, cfg.train_seq_len, accum)
            with env.autocast():
                loss = model(x, y)
            loss_sum += loss.detach()
            (loss / accum).backward()
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(base_model.parameters(), cfg.grad_clip_norm)
        optimizers.step()
        optimizers.zero_grad()
        return loss_sum / accum

    def new_loader() -> DistributedTokenLoader:
        return DistributedTokenLoader(train_files, env.rank, env.world_size, env.device)

    # Untimed warm-up (compilation, autotuning), then restore weights, optimizer and loader state.
    loader = new_loader()
    if cfg.warmup_steps > 0:
        initial_model = {k: v.detach().cpu().clone() for k, v in base_model.state_dict().items()}
        initial_opt = [copy.deepcopy(s) for s in optimizers.state_dicts()]
        model.train()
        for i in range(cfg.warmup_steps):
            train_step(loader)
            if cfg.warmup_steps <= 20 or (i + 1) % 10 == 0 or i + 1 == cfg.warmup_steps:
                log.log(f"warmup_step:{i + 1}/{cfg.warmup_steps}")
        base_model.load_state_dict(initial_model, strict=True)
        optimizers.load_state_dicts(initial_opt)
        optimizers.zero_grad()
        loader = new_loader()

    # Main loop: the timer pauses during periodic validation; the warmdown follows elapsed time.
    cap_ms = 1000.0 * cfg.max_wallclock_seconds if cfg.max_wallclock_seconds > 0 else None
    training_ms, stop_after, last_val = 0.0, None, None
    log.start_progress(cfg.iterations, cfg.max_wallclock_seconds)
    env.sync()
    t0 = clock()
    step, last_loss = 0, None  # the previous step's loss, named if the next one is not finite
    while True:
        last_step = step == cfg.iterations or (stop_after is not None and step >= stop_after)
        if last_step or (cfg.val_loss_every > 0 and step % cfg.val_loss_every == 0):
            env.sync()
            training_ms += 1000.0 * (clock() - t0)
            last_val = run_eval(model)
            log.log(
                f"step:{step}/{cfg.iterations} val_loss:{last_val.val_loss:.4f} val_bpb:{last_val.val_bpb:.4f} "
                f"train_time:{training_ms:.0f}ms step_avg:{training_ms / max(step, 1):.2f}ms"
            )
            log.metric(
                event="val", step=step, val_loss=last_val.val_loss, val_bpb=last_val.val_bpb, train_time_ms=training_ms
            )
            env.sync()
            t0 = clock()
        if last_step:
            if stop_after is not None and step < cfg.iterations:
                log.log(f"stopping_early: wallclock_cap train_time:{training_ms:.0f}ms step:{step}/{cfg.iterations}")
            break
        state.step, state.elapsed_ms = step, training_ms + 1000.0 * (clock() - t0)
        state.lr_scale = lr_scale(step, state.elapsed_ms, cfg)
        pm.hook.pgolf_step_start(state=state)
        optimizers.set_lr_scale(state.lr_scale)
        optimizers.set_muon_momentum(muon_momentum(step, cfg))
        train_loss = train_step(loader)
        step += 1
        bad = (~torch.isfinite(train_loss)).to(torch.int32)  # one sync a step: stop at once, not at the next log
        if env.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        if bad.item():
            previous: float | None = None if last_loss is None else float(last_loss.item())
            summary, msg = rundir.diverged(recipe.run.name, recipe.run.seed, step, train_loss.item(), previous)
            log.stop_progress()
            log.log(f"stopping: {msg}")
            if env.rank == 0:
                write_json_atomic(out / "summary.json", summary)
            raise rundir.RunFault(f"{msg} (summary: {out / 'summary.json'})")
        last_loss = train_loss
        state.step = step
        pm.hook.pgolf_post_step(state=state)
        approx_ms = training_ms + 1000.0 * (clock() - t0)
        if cfg.train_log_every > 0 and (step <= 10 or step % cfg.train_log_every == 0 or stop_after is not None):
            if env.distributed:  # the mean over all ranks: the loss of the global batch, not rank 0's share
                dist.all_reduce(train_loss, op=dist.ReduceOp.SUM)  # (gloo has no AVG)
                train_loss /= env.world_size
            loss_value = train_loss.item()
            log.log(
                f"step:{step}/{cfg.iterations} train_loss:{loss_value:.4f} "
                f"train_time:{approx_ms:.0f}ms step_avg:{approx_ms / step:.2f}ms"
            )
            log.metric(
                event="train", step=step, train_loss=loss_value, train_time_ms=approx_ms, lr_scale=state.lr_scale
            )
            log.update_progress(step, loss_value, cfg.train_batch_tokens * step / max(approx_ms / 1e3, 1e-9), approx_ms)
        reached = cap_ms is not None and approx_ms >= cap_ms
        if env.distributed and cap_ms is not None:
            flag = torch.tensor(int(reached), device=env.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reached = bool(flag.item())
        if stop_after is None and reached:
            stop_after = step
    log.stop_progress()
    if env.is_cuda:
        log.log(
            f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB "
            f"reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB"
        )

    # Final weights (EMA/SWA plugins), then the pre-export score on exactly those weights.
    t_eval = time.perf_counter()
    final = pm.hook.pgolf_final_weights(state=state)
    if final is not None:
        load_weights(base_model, final)
        last_val = run_eval(model)
        log.log(f"final_weights val_loss:{last_val.val_loss:.4f} val_bpb:{last_val.val_bpb:.4f}")
    assert last_val is not None

    # Export: quantize, compress, write; then read the file back and score the round trip.
    t_export = time.perf_counter()
    exported = export_model(state, pm, out, plugins)
    export_seconds = time.perf_counter() - t_export
    env.barrier()
    load_weights(base_model, exported.dequantize(exported.read_back()))
    # Test-time adaptation (pgolf_eval_adapt) joins the last, reported eval stage only: the round
    # trip, or the sliding window when there is one. It sees each chunk after it was scored.
    adapters = [impl.plugin_name for impl in pm.hook.pgolf_eval_adapt.get_hookimpls()]
    adapt = None
    if adapters:
        stage = "sliding_window" if recipe.eval.sliding_stride > 0 else "roundtrip"
        log.log(f"eval_adapt: {','.join(adapters)} on the final {stage} eval")

        def adapt(x: torch.Tensor, y: torch.Tensor) -> None:
            pm.hook.pgolf_eval_adapt(model=base_model, chunk=(x, y), state=state)

    roundtrip = run_eval(model, adapt if recipe.eval.sliding_stride <= 0 else None)
    label = exported.label
    log.log(
        f"final_{label}_roundtrip val_loss:{roundtrip.val_loss:.4f} val_bpb:{roundtrip.val_bpb:.4f} "
        f"eval_time:{1000 * roundtrip.seconds:.0f}ms"
    )
    log.log(f"final_{label}_roundtrip_exact val_loss:{roundtrip.val_loss:.8f} val_bpb:{roundtrip.val_bpb:.8f}")
    sliding = None
    if recipe.eval.sliding_stride > 0:
        stride, rows, tail = recipe.eval.sliding_stride, recipe.eval.sliding_batch_seqs, recipe.eval.sliding_tail
        sliding = evaluation.eval_sliding(
            base_model, val_tokens, eval_seq, stride, rows, tables, tail=tail, after_chunk=adapt, **where
        )
        log.log(
            f"final_{label}_sliding_window val_loss:{sliding.val_loss:.4f} val_bpb:{sliding.val_bpb:.4f} "
            f"stride:{stride} eval_time:{1000 * sliding.seconds:.0f}ms"
        )
        log.log(f"final_{label}_sliding_window_exact val_loss:{sliding.val_loss:.8f} val_bpb:{sliding.val_bpb:.8f}")
    eval_seconds = time.perf_counter() - t_eval

    summary = manifest.summarize(
        recipe=recipe,
        env=env,
        plugins=plugins,
        pre=last_val,
        roundtrip=roundtrip,
        sliding=sliding,
        exported=exported,
        steps=step,
        train_seconds=training_ms / 1000.0,
        eval_seconds=eval_seconds,
        export_seconds=export_seconds,
        n_params=n_params,
        train_files=train_files,
        val_tokens=val_tokens,
        tables=tables,
        tokenizer_path=tokenizer_path,
        reports=state.reports,
        total_seconds=time.perf_counter() - t_start,
    )
    if env.rank == 0:
        resolved = manifest.resolved_recipe_text(recipe, plugins, summary)
        artifact.write_atomic(out / "recipe.resolved.toml", resolved.encode("utf-8"))
        manifest.print_summary(summary, log)
        write_json_atomic(out / "summary.json", summary)
    if env.distributed:
        dist.destroy_process_group()
    return summary


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a state dict, casting each tensor to the live parameter's dtype and device."""
    live = model.state_dict()
    model.load_state_dict(
        {k: v.to(dtype=live[k].dtype, device=live[k].device) for k, v in weights.items()}, strict=True
    )


@dataclass
class Exported:
    label: str
    path: Path
    model_bytes: int
    code_bytes: int
    raw_bytes: int
    codec: str
    dequantize: Any

    def read_back(self) -> Any:
        return artifact.deserialize(artifact.decompress(self.path.read_bytes(), self.codec))


def export_model(state: TrainState, pm: Any, out: Path, plugins: list[Any]) -> Exported:
    """Quantize (plugin or the baseline int8), compress (plugin or `[export]` codec), write atomically."""
    recipe, log = state.recipe, state.log
    weights = {k: v.detach().to("cpu").contiguous() for k, v in state.model.state_dict().items()}
    if state.env.rank == 0:
        artifact.write_atomic(out / "final_model.pt", artifact.serialize(weights))
    plan: dict[str, dict[str, Any]] = {name: {} for name in weights}
    pm.hook.pgolf_pre_export(state=state, weights=weights, plan=plan)
    answer = pm.hook.pgolf_quantize(state=state, weights=weights, plan=plan)
    if answer is None:
        obj, _ = artifact.quantize_int8(
            weights,
            keep_float_max_numel=recipe.export.keep_float_max_numel,
            clip_quantile=recipe.export.clip_quantile,
            control_patterns=tuple(state.control_patterns),
        )
        quant_label, dequantize = "int8", artifact.dequantize_int8
    else:
        quant_label, obj, dequantize = answer
    raw = artifact.serialize(obj)
    compressed = pm.hook.pgolf_compress(raw=raw)
    codec, blob = (
        compressed
        if compressed is not None
        else (recipe.export.compressor, artifact.compress(raw, recipe.export.compressor, recipe.export.level))
    )
    path = out / "final_model.ptz"
    if state.env.rank == 0:
        artifact.write_atomic(path, blob)
    code_files = manifest.code_files(plugins)
    code_bytes = sum(len(f.read_text(encoding="utf-8").encode("utf-8")) for f in code_files)
    model_bytes = path.stat().st_size if state.env.rank == 0 else len(blob)
    label = f"{quant_label}_{codec}"
    log.log(f"Serialized model {quant_label}+{codec}: {model_bytes} bytes (raw_torch:{len(raw)})")
    log.log(f"Code size: {code_bytes} bytes ({len(code_files)} files: core + enabled plugins)")
    log.log(f"Total submission size {quant_label}+{codec}: {model_bytes + code_bytes} bytes")
    if model_bytes + code_bytes > recipe.export.artifact_limit_bytes:
        log.log(
            f"WARNING: artifact {model_bytes + code_bytes} bytes is over the "
            f"{recipe.export.artifact_limit_bytes:,}-byte limit"
        )
    return Exported(label, path, model_bytes, code_bytes, len(raw), codec, dequantize)
