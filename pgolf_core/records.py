"""Run records: what a run leaves in its folder, and the folder's rules.

    the folder    a finished run (its `summary.json`) is never replaced unless asked; a folder in use by a live run
                  is never shared; what a killed run left behind is cleaned up
    the log       `train.log` in the records' line format, `metrics.jsonl`, a progress display on a terminal
    the summary   `summary.json` (schema in docs/summary.md) with its provenance manifest, written atomically last;
                  the resolved recipe; code-byte accounting
Only rank 0 prints or writes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich import progress as rp
from rich.console import Console

from pgolf_core.data.check import sha256_file
from pgolf_core.data.tokens import Data, read_shard
from pgolf_core.evaluation import EvalResult
from pgolf_core.exporter import CORE_DIR, Written, write_atomic
from pgolf_core.model import count_parameters
from pgolf_core.registry import Plugins, noncompliance, version_order
from pgolf_core.types import PGOLF_VERSION, PgolfError, Plugin, Recipe, TrainState, WriteFault

# ---------------------------------------------------------------- the run folder
# `check_free` only reads, so `train()` calls it before any setup; `Claim.take` runs after every check passed and
# is the first thing that writes. Faults after that (a diverged loss, a full disk) are `RunFault`s: the CLI prints
# them in one line and exits 1.

LOCK = ".pgolf.lock"
FINISHED = "summary.json"
# What a run writes: replaced wholesale when an unfinished (or --overwrite'n) directory is reused.
SET_ASIDE = ".replaced"  # the finished run that --overwrite replaces, kept until the new run has its summary
RUN_FILES = (FINISHED, "train.log", "metrics.jsonl", "recipe.resolved.toml", "final_model.pt", "final_model.ptz")


def _owner(out: Path) -> tuple[int, str] | None:
    """(pid, host) of the lock in `out`, or None without one; an unreadable lock counts as stale."""
    try:
        pid, host = (out / LOCK).read_text(encoding="utf-8").split()[:2]
        return int(pid), host
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return (0, socket.gethostname())


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # another machine's process cannot be checked from here: assume it runs
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError) as exc:
        return isinstance(exc, PermissionError)  # it exists, but belongs to another user
    return True


def default_out(recipe: Recipe) -> Path:
    """`<run.out_dir>/<run.name>[-<variant>...]-seed<seed>`: the command line's toggles are in the name."""
    return Path(recipe.run.out_dir) / "-".join([recipe.run.name, *recipe.variant, f"seed{recipe.run.seed}"])


def finished(out: Path) -> bool:
    """`out` holds a finished run: a summary whose status says so (a diverged run writes a summary too)."""
    try:
        return json.loads((out / FINISHED).read_text(encoding="utf-8")).get("status", "finished") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


def restore_set_aside(out: Path) -> None:
    """Put back the finished run that `--overwrite` set aside, when the run replacing it did not finish (killed,
    interrupted, diverged): a failed overwrite must not lose both runs. A diverged run's summary is kept beside
    it as `summary.failed.json`."""
    aside = out / SET_ASIDE
    if not (aside / FINISHED).is_file() or finished(out) or ((o := _owner(out)) and _alive(*o)):
        return
    if (out / FINISHED).exists():
        (out / FINISHED).replace(out / "summary.failed.json")
    for name in RUN_FILES[::-1]:  # the summary last: a run counts as finished only once it is whole again
        (out / name).unlink(missing_ok=True)
        if (aside / name).exists():
            (aside / name).replace(out / name)
    shutil.rmtree(aside, ignore_errors=True)


def check_free(out: Path, overwrite: bool) -> None:
    """Refuse (exit 2) a file as the directory, a finished run without `overwrite`, a live lock (after putting
    back a finished run that an interrupted overwrite had set aside)."""
    if out.exists() and not out.is_dir():
        raise PgolfError(f"--out {out} is a file, not a directory")
    restore_set_aside(out)
    if (out / FINISHED).exists() and not overwrite:
        raise PgolfError(
            f"{out} holds a finished run ({out / FINISHED}); pass --overwrite to replace it, or choose another --out"
        )
    if (owner := _owner(out)) is not None and _alive(*owner):
        raise PgolfError(
            f"{out} is in use by another run: pid {owner[0]} on {owner[1]} (lock {out / LOCK}); "
            "wait for it to finish or choose another --out"
        )


class Claim:
    """The lock of one run directory, taken once every check passed and released however the run ends."""

    path: Path | None = None

    def take(self, out: Path, overwrite: bool, log: Callable[[str], None]) -> None:
        check_free(out, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        lock = out / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                if (owner := _owner(out)) is not None and _alive(*owner):
                    raise PgolfError(f"{out} is in use by another run: pid {owner[0]} on {owner[1]}") from None
                log(f"run_dir: taking over the stale lock {lock} (pid {owner[0] if owner else '?'} is gone)")
                lock.unlink(missing_ok=True)
        else:
            raise PgolfError(f"could not lock {out}: another run keeps taking {lock}")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        self.path, aside = lock, out / SET_ASIDE
        # A finished run (--overwrite) is set aside, its summary first, until the new run has a summary of its own;
        # an unfinished one's files go.
        shutil.rmtree(aside, ignore_errors=True)
        if finished := (out / FINISHED).exists():
            aside.mkdir()
        for name in RUN_FILES:
            if finished and (out / name).exists():
                (out / name).replace(aside / name)
            (out / name).unlink(missing_ok=True)
        for tmp in out.glob(".*.tmp*"):
            log(f"run_dir: removing {tmp.name}, left by an interrupted run")
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Unlock; then drop the run set aside if the new one wrote its summary, else put it back."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            out, self.path = self.path.parent, None
            if finished(out):
                shutil.rmtree(out / SET_ASIDE, ignore_errors=True)
            restore_set_aside(out)


def strict_json(data: Any, where: str = "") -> tuple[Any, list[str]]:
    """`data` with every NaN/inf float replaced by None, and the keys where that happened: JSON has
    no NaN, and a reader of summary.json must not choke on Python's bare `NaN`."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, [where or "value"]
    if isinstance(data, dict):
        pairs = [(k, strict_json(v, f"{where}.{k}" if where else str(k))) for k, v in data.items()]
        return {k: v for k, (v, _) in pairs}, [w for _, (_, ws) in pairs for w in ws]
    if isinstance(data, list | tuple):
        items = [strict_json(v, f"{where}[{i}]") for i, v in enumerate(data)]
        return [v for v, _ in items], [w for _, ws in items for w in ws]
    return data, []


def diverged(name: str, seed: int, step: int, loss: float, last: float | None) -> tuple[dict[str, Any], str]:
    """The summary of a run stopped by a non-finite training loss, and the message that says so."""
    before = f"the last finite loss was {last:.4f} at step {step - 1}" if last is not None else "no finite loss before"
    msg = (
        f"training loss became {loss} at step {step} ({before}); the run stopped. Lower the learning rates "
        "or the init scale, or check the data"
    )
    summary = {"schema": "pgolf.summary/1", "name": name, "seed": seed, "status": "diverged", "error": msg}
    return summary | {"steps": step, "last_finite_train_loss": last}, msg


# ---------------------------------------------------------------- the log and the metrics


class RunLog:
    def __init__(self, out_dir: Path | None, rank: int = 0, interactive: bool | None = None) -> None:
        self.enabled = rank == 0
        self.out = out_dir if self.enabled else None  # the run folder (train.log, metrics.jsonl) once it is claimed
        self.progress: rp.Progress | None = None
        self._interactive = (sys.stdout.isatty() if interactive is None else interactive) and self.enabled
        self._pending: list[str] = []  # lines logged before the run directory was claimed

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(msg, markup=False)
        else:
            print(msg, flush=True)
        if self.out is not None:
            _append(self.out / "train.log", msg + "\n")
        else:
            self._pending.append(msg)

    def attach(self, out_dir: Path) -> None:
        """Start writing `train.log` and `metrics.jsonl` in `out_dir` (claimed only after every check
        passed), beginning with the lines logged while the run was being set up."""
        if not self.enabled:
            return
        self.out = out_dir
        _append(out_dir / "train.log", "".join(m + "\n" for m in self._pending))
        self._pending.clear()

    def metric(self, **fields: Any) -> None:
        if self.out is not None:
            fields.setdefault("time", round(time.time(), 3))
            _append(self.out / "metrics.jsonl", json.dumps(strict_json(fields)[0]) + "\n")

    # Progress display on a terminal (plain log lines otherwise): the training steps against `iterations`, the
    # number the log prints, and below them the batches of the evaluation running now (the training clock stops).
    def start_progress(self, total_steps: int, wallclock_s: float) -> None:
        if not self._interactive:
            return
        columns = [rp.TextColumn("[bold]{task.description:<10}"), rp.BarColumn(), rp.MofNCompleteColumn()]
        columns += [rp.TextColumn("{task.fields[info]}"), rp.TimeElapsedColumn(), rp.TimeRemainingColumn()]
        self.progress = rp.Progress(*columns, console=Console(highlight=False, soft_wrap=True), transient=True)
        self.progress.start()
        self._task = self.progress.add_task("train", total=total_steps or None, info="")
        self._eval = self.progress.add_task("eval", total=None, info="", visible=False)
        self._wallclock_s = wallclock_s

    def update_progress(self, step: int, loss: float | None = None, tok_s: float = 0.0, elapsed_ms: float = 0) -> None:
        """Every step moves the bar; the log steps (which read the loss) also refresh the figures."""
        if self.progress is None:
            return
        self.progress.update(self._task, completed=step)
        self.progress.update(self._eval, visible=False)  # training again: the evaluation is over
        if loss is not None:
            cap = f"  wallclock cap in {self._wallclock_s - elapsed_ms / 1e3:.0f} s" if self._wallclock_s else ""
            self.progress.update(self._task, info=f"loss {loss:.4f}  {tok_s:,.0f} tok/s{cap}")

    def eval_phase(self, name: str) -> None:
        """Show (and count batches of) the evaluation that starts now; `eval_batch` is called per batch."""
        if self.progress is not None:
            self.progress.reset(self._eval, total=None, description=name, info="", visible=True)

    def eval_batch(self) -> None:
        if self.progress is not None:
            self.progress.advance(self._eval)

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _append(path: Path, text: str) -> None:
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise WriteFault(path, exc) from exc


def write_json_atomic(path: Path, data: Any) -> None:
    """Strict JSON (non-finite numbers become null, listed under `non_finite`), written atomically."""
    clean, bad = strict_json(data)
    if bad and isinstance(clean, dict):
        clean["non_finite"] = bad
    write_atomic(path, (json.dumps(clean, indent=2, allow_nan=False) + "\n").encode("utf-8"))


# ---------------------------------------------------------------- the summary and its manifest


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CORE_DIR, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


UNIGRAM_TRAIN_TOKENS = 20_000_000  # the unigram reference counts this many train tokens at most


def unigram_bpb(train_files: list[Path], val_tokens: torch.Tensor, tables: Any, vocab: int) -> float:
    """BPB of a unigram model (add-one smoothed counts from the first `UNIGRAM_TRAIN_TOKENS` train tokens)
    on the val targets: the floor any trained model must clear. Its bytes are the run's (`tables`: the byte tables
    or the sidecar), so the two scores divide by the same number."""
    counts = np.ones(vocab, dtype=np.float64)
    seen = 0
    for f in train_files:
        toks = read_shard(f).numpy()[: UNIGRAM_TRAIN_TOKENS - seen]
        counts += np.bincount(toks.astype(np.int64), minlength=vocab)[:vocab]
        seen += toks.size
        if seen >= UNIGRAM_TRAIN_TOKENS:
            break
    logp = np.log(counts / counts.sum())
    val = val_tokens.to(torch.int64)
    # an exact integer sum
    n_bytes = tables.to("cpu").target_bytes(val[:-1], val[1:], torch.arange(1, len(val))).sum().item()
    return float(-logp[val[1:].numpy()].sum() / (math.log(2) * n_bytes))


class Finished(Protocol):
    """What the summary reads off a finished run (`run.Run` once `finish` has scored and exported it), typed
    here so that the records layer never reaches up to the run."""

    state: TrainState  # the recipe, the environment, the model, the last step, the plugins' reports
    data: Data
    plugins: Plugins
    step_times: list[float]
    zeroed: list[str]
    last_val: EvalResult
    roundtrip: EvalResult
    sliding: EvalResult | None
    written: Written
    code_bytes: int
    seconds: dict[str, float]  # "train", "eval", "export", "total"


def summarize(run: Finished) -> dict[str, Any]:
    """The summary of a finished run (schema in docs/summary.md)."""
    recipe, env, data, steps, seconds = run.state.recipe, run.state.env, run.data, run.state.step, run.seconds
    pre, roundtrip, sliding, written = run.last_val, run.roundtrip, run.sliding, run.written
    total_bytes, score = written.model_bytes + run.code_bytes, (sliding or roundtrip).val_bpb
    noncompliant = noncompliance(run.plugins.pm)
    unigram = unigram_bpb(data.train_files, data.val_tokens.cpu(), data.tables, recipe.model.vocab_size)
    return {
        "schema": "pgolf.summary/1", "status": "finished", "name": recipe.run.name, "seed": recipe.run.seed,
        "val_loss": pre.val_loss, "val_bpb": pre.val_bpb,
        "roundtrip_val_loss": roundtrip.val_loss, "roundtrip_val_bpb": roundtrip.val_bpb,
        "sliding_val_loss": sliding.val_loss if sliding else None,
        "sliding_val_bpb": sliding.val_bpb if sliding else None, "score_val_bpb": score, "unigram_val_bpb": unigram,
        "zeroed_tensors": run.zeroed, "warnings": health_warnings(score, unigram, run.zeroed, run.step_times[1:]),
        "artifact_bytes": total_bytes, "model_bytes": written.model_bytes, "code_bytes": run.code_bytes,
        "artifact_limit_bytes": recipe.export.artifact_limit_bytes,
        "over_limit": total_bytes > recipe.export.artifact_limit_bytes, "artifact_format": written.label,
        "model_params": count_parameters(run.state.model), "steps": steps,
        "step_ms": 1000.0 * seconds["train"] / max(steps, 1), "train_seconds": seconds["train"],
        "eval_seconds": seconds["eval"], "export_seconds": seconds["export"],
        "roundtrip_eval_seconds": roundtrip.seconds, "sliding_eval_seconds": sliding.seconds if sliding else None,
        "eval_compliant": not noncompliant, "eval_noncompliance": noncompliant or None,
        "eval_seconds_8xh100": seconds["eval"] * env.world_size / 8 if env.is_cuda else None,  # as if these were H100s
        "total_seconds": seconds["total"],
        "plugins": [{"name": p.name, **version_order(p)} for p in run.plugins.ordered],
        "plugin_reports": run.state.reports,
        "manifest": {
            "git_sha": git_sha(), "recipe_sha256": recipe.sha256(), "recipe_source": recipe.source,
            "pgolf_version": PGOLF_VERSION,
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(env.device) if env.is_cuda else platform.processor() or "cpu",
            "device_count": env.world_size,
            "data": {
                "train_shards": len(data.train_files), "train_dir": str(data.train_files[0].parent),
                "val_tokens": int(data.val_tokens.numel() - 1), "tokenizer": str(data.tokenizer_path),
                "tokenizer_sha256": sha256_file(data.tokenizer_path),
                "val_bytes_per_token": float(roundtrip.bytes / max(roundtrip.tokens, 1)),
            },
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }  # fmt: skip


def health_warnings(score: float, unigram: float, zeroed: list[str], step_ms: list[float]) -> list[str]:
    """What makes a finished run's numbers misleading, each in one line (in the summary, log and console)."""
    out = []
    if score > unigram:
        out.append(f"score {score:.4f} bpb is worse than the unigram reference {unigram:.4f}: too few steps to learn")
    if zeroed:
        out.append(f"{len(zeroed)} tensors exported as all zeros (the scored model lacks them): train more steps")
    median = sorted(step_ms)[len(step_ms) // 2] if step_ms else 0.0  # the first step (lazy init) left out
    if len(step_ms) >= 20 and (slow := [t for t in step_ms if t > 10 * median]):  # a median of enough steps
        out.append(
            f"{len(slow)} steps took over 10x the median step ({max(slow):.0f} vs {median:.0f} ms): the machine was "
            "busy, so times (and a result capped by wallclock) are not comparable"
        )
    return out


def resolved_recipe_text(recipe: Recipe, plugins: list[Plugin], summary: dict[str, Any]) -> str:
    header = [
        f"# Resolved recipe of {recipe.source} (defaults filled in, overrides applied).",
        f"# git_sha: {summary['manifest']['git_sha']}",
        f"# recipe_sha256: {summary['manifest']['recipe_sha256']}",
        "# hook order: " + (", ".join(f"{p.name} {getattr(p, 'version', '?')}" for p in plugins) or "(no plugins)"),
        *[f"# command-line variant: {', '.join(recipe.variant)} (already applied below)"] * bool(recipe.variant),
        "",
    ]
    return "\n".join(header) + recipe.to_toml()


def print_summary(summary: dict[str, Any], log: Any, out: Path) -> None:
    """The run's last lines: every score, the one that counts marked, the warnings, where the files are."""
    s, h100, sliding = summary, summary["eval_seconds_8xh100"] or 0.0, summary["sliding_val_bpb"] is not None
    lines = [
        "",
        "=" * 60,
        f"summary: {s['name']} seed {s['seed']}  ({s['steps']} steps, {s['step_ms']:.1f} ms/step)",
        f"  val_bpb (pre-export)      {s['val_bpb']:.4f}   val_loss {s['val_loss']:.4f}",
        f"  val_bpb (round trip)      {s['roundtrip_val_bpb']:.4f}   ({s['artifact_format']})"
        + " <- SCORE" * (not sliding),
        *([f"  val_bpb (sliding window)  {s['sliding_val_bpb']:.4f}   <- SCORE"] if sliding else []),
        f"  unigram baseline val_bpb  {s['unigram_val_bpb']:.4f}",
        f"  artifact {s['artifact_bytes']:,} bytes = model {s['model_bytes']:,} + code {s['code_bytes']:,}"
        f"  (limit {s['artifact_limit_bytes']:,}{', OVER' if s['over_limit'] else ''})",
        f"  train {s['train_seconds']:.1f} s, eval {s['eval_seconds']:.1f} s",
        *([f"  eval NOT compliant: {s['eval_noncompliance']}"] if not s["eval_compliant"] else []),
        *([f"  WARNING: eval ~{h100:.0f} s on 8 GPUs (projected), over the challenge's 600 s"] * (h100 > 600)),
        *[f"  WARNING: {w}" for w in s["warnings"]],
        f"score_val_bpb {s['score_val_bpb']:.4f} ({'sliding window' if sliding else 'round trip'}); run folder {out}",
        "=" * 60,
    ]
    for line in lines:
        log.log(line)
