"""What a run writes for humans and machines: a log in the records' line format, `metrics.jsonl`,
a progress display on a terminal, and `summary.json` written atomically last (its presence marks
a finished run). Only rank 0 prints or writes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich import progress as rp
from rich.console import Console

from pgolf_core.exporter import write_atomic
from pgolf_core.rundir import strict_json
from pgolf_core.types import WriteFault


class RunLog:
    def __init__(self, out_dir: Path | None, rank: int = 0, interactive: bool | None = None) -> None:
        self.enabled = rank == 0
        self.log_path = out_dir / "train.log" if out_dir and self.enabled else None
        self.metrics_path = out_dir / "metrics.jsonl" if out_dir and self.enabled else None
        self.progress: rp.Progress | None = None
        self._task: Any = None
        self._interactive = (sys.stdout.isatty() if interactive is None else interactive) and self.enabled
        self._pending: list[str] = []  # lines logged before the run directory was claimed

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(msg, markup=False)
        else:
            print(msg, flush=True)
        if self.log_path is not None:
            _append(self.log_path, msg + "\n")
        else:
            self._pending.append(msg)

    def attach(self, out_dir: Path) -> None:
        """Start writing `train.log` and `metrics.jsonl` in `out_dir` (claimed only after every check
        passed), beginning with the lines logged while the run was being set up."""
        if not self.enabled:
            return
        self.log_path, self.metrics_path = out_dir / "train.log", out_dir / "metrics.jsonl"
        _append(self.log_path, "".join(m + "\n" for m in self._pending))
        self._pending.clear()

    def metric(self, **fields: Any) -> None:
        if self.metrics_path is not None:
            fields.setdefault("time", round(time.time(), 3))
            _append(self.metrics_path, json.dumps(strict_json(fields)[0]) + "\n")

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
