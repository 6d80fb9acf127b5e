"""The run directory's rules: a finished run (its `summary.json`) is never replaced unless asked, a
directory in use by a live run is never shared, and what a killed run left behind is cleaned up.

`check_free` only reads, so `train()` calls it before any setup; `Claim.take` runs after every
check passed and is the first thing that writes. Faults after that (a diverged loss, a full disk)
are `RunFault`s: the CLI prints them in one line and exits 1.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgolf_core.types import PgolfError

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


def default_out(recipe: Any) -> Path:
    """`<run.out_dir>/<run.name>[-<variant>...]-seed<seed>`: the command line's toggles are in the name."""
    return Path(recipe.run.out_dir) / "-".join([recipe.run.name, *recipe.variant, f"seed{recipe.run.seed}"])


def restore_set_aside(out: Path) -> None:
    """Put back the finished run that `--overwrite` set aside, when the run replacing it ended (or was
    killed) without a summary of its own: an interrupted overwrite must not lose both runs."""
    aside = out / SET_ASIDE
    if not (aside / FINISHED).is_file() or (out / FINISHED).exists() or ((o := _owner(out)) and _alive(*o)):
        return
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
            if (out / FINISHED).exists():
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
