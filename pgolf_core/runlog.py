"""What a run writes for humans and machines: a log in the records' line format, `metrics.jsonl`,
a progress display on a terminal, and `summary.json` written atomically last (its presence marks
a finished run). Only rank 0 prints or writes."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunLog:
    def __init__(self, out_dir: Path | None, rank: int = 0, interactive: bool | None = None) -> None:
        self.enabled = rank == 0
        self.out_dir = out_dir
        self.log_path = out_dir / "train.log" if out_dir and self.enabled else None
        self.metrics_path = out_dir / "metrics.jsonl" if out_dir and self.enabled else None
        tty = sys.stdout.isatty() if interactive is None else interactive
        self.console = Console(highlight=False, soft_wrap=True) if self.enabled else None
        self.progress: Progress | None = None
        self._task: Any = None
        self._interactive = tty and self.enabled

    def log(self, msg: str, console: bool = True) -> None:
        if not self.enabled:
            return
        if console:
            if self.progress is not None:
                self.progress.console.print(msg, markup=False)
            else:
                print(msg, flush=True)
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(msg + "\n")

    def metric(self, **fields: Any) -> None:
        if self.metrics_path is not None:
            fields.setdefault("time", round(time.time(), 3))
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(fields) + "\n")

    # Progress display: a live bar on a terminal; plain log lines (from the loop) otherwise.
    def start_progress(self, total_steps: int, wallclock_s: float) -> None:
        if not self._interactive:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self._task = self.progress.add_task("train", total=total_steps, info="")
        self._wallclock_s = wallclock_s

    def update_progress(self, step: int, loss: float, tokens_per_s: float, elapsed_ms: float) -> None:
        if self.progress is None:
            return
        # The wallclock cap usually ends training before `iterations`: show the nearer bound.
        total = self.progress.tasks[0].total or step
        if self._wallclock_s > 0 and step > 0:
            total = min(total, max(step, round(step * 1000.0 * self._wallclock_s / max(elapsed_ms, 1e-9))))
        info = f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s"
        self.progress.update(self._task, completed=step, total=total, info=info)

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
