"""Run the planned (variant, seed) runs that are not finished, each as its own `python -m pgolf run`
subprocess (a kill of one never corrupts the parent), locally (`--jobs N`) or as SLURM jobs through
submitit. A run is finished when its `summary.json` exists; unfinished ones are redone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pgolf_core.types import PgolfError


def run_dir(run: dict[str, Any]) -> Path:
    return Path(run["args"][run["args"].index("--out") + 1])


def finished(run: dict[str, Any]) -> bool:
    return (run_dir(run) / "summary.json").exists()


def _event(out: Path, **fields: Any) -> None:
    with open(out / "events.jsonl", "a") as f:  # one short line per write: appends stay whole
        f.write(json.dumps({"time": time.time(), **fields}) + "\n")


def _done_events(out: Path) -> set[tuple[str, int]]:
    path = out / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    events = [json.loads(line) for line in lines if line.endswith("}")]  # a torn last line is ignored
    return {(e["variant"], e["seed"]) for e in events if e["event"] == "done"}


def run_one(argv: list[str], log_path: str, cwd: str, env: dict[str, str] | None = None) -> int:
    """One `pgolf run` in a subprocess; its output goes to `log_path` (outside the run dir, which the
    run itself clears when it redoes an unfinished run)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "pgolf", *argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    return proc.returncode


class Progress:
    """Variants done / total, the run in progress, ETA from the mean time of the runs so far."""

    def __init__(self, plan: dict[str, Any], todo: int) -> None:
        self.total, self.todo = len(plan["runs"]), todo
        self.durations: list[float] = []

    def line(self, running: str) -> str:
        left = self.todo - len(self.durations)
        eta = f"{left * sum(self.durations) / len(self.durations):.0f}s" if self.durations else "?"
        return f"ablate: {self.total - left}/{self.total} runs done, running {running}, ETA {eta}"


def execute(plan: dict[str, Any], args: Any) -> list[str]:
    """Run every unfinished run; returns the failures as 'variant/seedS: exit N (log)'."""
    out = Path(args.out)
    todo = [r for r in plan["runs"] if not finished(r)]
    progress = Progress(plan, len(todo))
    logged = _done_events(out)
    for r in plan["runs"]:
        if finished(r):
            print(f"ablate: {r['variant']}/seed{r['seed']} finished before, skipped", file=sys.stderr)
            if (r["variant"], r["seed"]) not in logged:  # killed between its summary.json and our event
                _event(out, event="done", variant=r["variant"], seed=r["seed"])
    if args.executor == "local":
        return _local(todo, args, out, progress)
    return _submitit(todo, args, out, progress)


def _log_path(out: Path, r: dict[str, Any]) -> str:
    return str(out / "logs" / f"{r['variant']}-seed{r['seed']}.log")


def _ended(out: Path, r: dict[str, Any], rc: int | str, t0: float, progress: Progress, failures: list[str]) -> None:
    """Record a run that ended: its time for the ETA, then `done` if it exited 0 with its summary, else a failure."""
    progress.durations.append(time.time() - t0)
    if rc == 0 and finished(r):
        _event(out, event="done", variant=r["variant"], seed=r["seed"])
    else:
        failures.append(f"{r['variant']}/seed{r['seed']}: exit {rc} (log: {_log_path(out, r)})")


def _local(todo: list[dict[str, Any]], args: Any, out: Path, progress: Progress) -> list[str]:
    import torch

    failures: list[str] = []
    gpus = torch.cuda.device_count() if args.jobs > 1 else 0  # 0 without CUDA

    def go(i_r: tuple[int, dict[str, Any]]) -> None:
        i, r = i_r
        env = dict(os.environ)
        if gpus >= args.jobs:
            env["CUDA_VISIBLE_DEVICES"] = str(i % args.jobs)  # one job per GPU
        print(progress.line(f"{r['variant']}/seed{r['seed']}"), file=sys.stderr, flush=True)
        _event(out, event="start", variant=r["variant"], seed=r["seed"])
        t0 = time.time()
        _ended(out, r, run_one(r["args"], _log_path(out, r), os.getcwd(), env), t0, progress, failures)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(go, enumerate(todo)))
    return failures


def _submitit(todo: list[dict[str, Any]], args: Any, out: Path, progress: Progress) -> list[str]:
    try:
        import submitit
    except ImportError:
        raise PgolfError("--executor slurm needs submitit: pip install 'pgolf[ablate]'") from None
    slurm = args.executor == "slurm"  # else submitit's own local executor: the slurm path, testable
    executor: Any = (submitit.AutoExecutor if slurm else submitit.LocalExecutor)(folder=str(out / "submitit"))
    executor.update_parameters(timeout_min=int(args.time))
    if slurm:
        executor.update_parameters(
            slurm_partition=args.partition,
            gpus_per_node=args.gpus_per_job,
            slurm_array_parallelism=args.array_parallelism,
        )
    jobs = []
    for r in todo:
        _event(out, event="start", variant=r["variant"], seed=r["seed"])
        jobs.append((r, executor.submit(run_one, r["args"], _log_path(out, r), os.getcwd(), None)))
    failures: list[str] = []
    for r, job in jobs:  # gathered as they finish
        label = f"{r['variant']}/seed{r['seed']}"
        print(progress.line(f"{len(todo)} jobs submitted, waiting for {label}"), file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            rc = job.result()
        except Exception as exc:  # noqa: BLE001 - a lost job is reported, the rest are gathered
            rc = f"job failed: {exc}"
        _ended(out, r, rc, t0, progress, failures)
    return failures
