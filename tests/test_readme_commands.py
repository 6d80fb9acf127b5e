"""Every shell command in the README and the plugin tutorial runs, in order, on a fresh clone.

The commands are read from the documents' ```bash blocks (so the test follows the documents as they change),
and each runs as written, in a `git clone` of this repository's HEAD, with a fresh HOME and PGOLF_CACHE and
this environment's `python`/`pgolf`/`pytest` first on PATH (in CI the environment was installed from the same
checkout by `.ci/run`). The only exceptions are the rows of OVERRIDES below: set-up that this environment has
already done, commands that need the network or 8 GPUs, and smoke-sized step counts for long runs. Each row
must still match a command, so the table cannot rot. Commands must also not collide: a second command whose
default run folder holds a finished run from an earlier one fails, and is named as a collision.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/writing-plugins.md")
FENCE = re.compile(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", re.M | re.S)

# Parts of a `a && b && c` line that set up an environment: this test runs in one that is already set up.
SETUP = re.compile(r"python3? -m venv \S+|[.] \S*bin/activate|pip install (torch\S*|-e [\"']?[.](\[\w+\])?[\"']?)")

# (pattern, replacement or None to skip, why). A replacement is re.sub's, applied to the whole command.
OVERRIDES: list[tuple[str, str | None, str]] = [
    (r"^pytest -q$", None, "the default test suite itself (this test is in the slow suite; it would recurse)"),
    (r"^pgolf data fineweb ", None, "downloads FineWeb shards from the Hugging Face hub (network)"),
    (r"^torchrun .*--nproc_per_node=8", None, "8 GPUs and the full FineWeb shards"),
    (
        r"^pip install -e (\S+)",
        r'python -m pip install -q --no-deps --no-build-isolation --target "$PGOLF_TEST_SITE" \1',
        "into a folder of its own on PYTHONPATH, never into the environment that runs the tests",
    ),
    (
        r"^pgolf run .*--smoke.*$",
        r"\g<0> --set train.iterations=5 --set eval.max_tokens=4096",
        "smoke-sized: 5 steps, 4,096 validation tokens (the last --set wins; --smoke's 200 steps take ~1 min a run)",
    ),
    (
        r"^pgolf ablate (?!.*--only).*$",
        r"\g<0> --only xsa --set eval.max_tokens=4096",
        "one plugin toggled (2 variants) instead of every plugin, 4,096 validation tokens; its step count as written",
    ),
]


@dataclass
class Command:
    document: str
    written: str  # as the document shows it
    run: str | None  # what this test runs (None: skipped)
    why: str = ""  # the OVERRIDES rows that changed it, or why it is skipped


def shell_lines(text: str) -> list[str]:
    """The commands of every ```bash block, in order: continuation lines joined, blanks and comments dropped."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.strip())
    return lines


def plan(document: str, line: str, used: set[int]) -> Command:
    """What to run for one documented line: its set-up prefix dropped, then the OVERRIDES rows applied."""
    parts = [part.strip() for part in line.split("&&")]
    kept = [part for part in parts if not SETUP.fullmatch(part)]
    why = ["set-up done by this environment"] if len(kept) < len(parts) else []
    command: str | None = " && ".join(kept) or None
    for i, (pattern, replacement, reason) in enumerate(OVERRIDES):
        if command is not None and re.search(pattern, command):
            used.add(i)
            why.append(reason)
            command = None if replacement is None else re.sub(pattern, replacement, command)
    return Command(document, line, command, "; ".join(why))


def fresh_clone(tmp: Path) -> Path:
    clone = tmp / "clone"
    done = subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot clone {ROOT} (not a git checkout?): {done.stderr.strip()}")
    return clone


@pytest.mark.slow
def test_every_readme_and_tutorial_command_runs_in_order_on_a_fresh_clone(tmp_path):
    clone = fresh_clone(tmp_path)
    used: set[int] = set()
    commands = [plan(doc, line, used) for doc in DOCUMENTS for line in shell_lines((clone / doc).read_text())]
    assert commands, f"no ```bash blocks found in {DOCUMENTS}"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "PGOLF_CACHE": str(tmp_path / "cache"),
        "PGOLF_TEST_SITE": str(tmp_path / "site"),
        "PYTHONPATH": str(tmp_path / "site"),
    }
    (tmp_path / "home").mkdir()
    failures, collisions, log = [], [], []
    for c in commands:
        if c.run is None:
            log.append(f"skipped  {c.written}  ({c.why})")
            continue
        start = time.monotonic()
        done = subprocess.run(["bash", "-c", c.run], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
        took = time.monotonic() - start
        log.append(f"exit {done.returncode:<3} {took:6.1f} s  {c.run}" + (f"  ({c.why})" if c.why else ""))
        output = done.stdout + done.stderr
        if "holds a finished run" in output:
            collisions.append(c.run)
        if done.returncode != 0:
            failures.append(f"{c.document}: `{c.run}` exited {done.returncode}:\n{output[-3000:]}")
    print("\n".join(log))
    unused = [OVERRIDES[i][0] for i in range(len(OVERRIDES)) if i not in used]
    assert not collisions, "commands collide on a run folder:\n" + "\n".join(collisions) + "\n\n" + "\n".join(log)
    assert not failures, "\n\n".join(failures) + "\n\n" + "\n".join(log)
    assert not unused, f"OVERRIDES rows that match no documented command any more (remove them): {unused}"


def test_commands_are_read_from_bash_blocks_only_with_set_up_dropped_and_overrides_applied():
    """The extraction and the table on a made-up document: the fast check of the slow test's logic."""
    text = (
        "Set up:\n\n```bash\npython3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 "
        '&& pip install -e ".[dev]" && pgolf run r.toml --smoke\n```\n\n'
        "```\npgolf run RECIPE [--smoke]\n```\n\n"
        "```bash\n# a comment\npgolf run r.toml --smoke \\\n  --set train.iterations=150\npytest -q\n```\n"
        "```sh\npgolf ablate r.toml --smoke --seeds 2\n```\n"
    )
    used: set[int] = set()
    commands = [plan("doc.md", line, used) for line in shell_lines(text)]
    smoke_sized = "--set train.iterations=5 --set eval.max_tokens=4096"
    assert [(c.written, c.run) for c in commands] == [
        (
            'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[dev]" '
            "&& pgolf run r.toml --smoke",
            f"pgolf run r.toml --smoke {smoke_sized}",
        ),
        (
            "pgolf run r.toml --smoke    --set train.iterations=150",
            f"pgolf run r.toml --smoke    --set train.iterations=150 {smoke_sized}",
        ),
        ("pytest -q", None),
        (
            "pgolf ablate r.toml --smoke --seeds 2",
            "pgolf ablate r.toml --smoke --seeds 2 --only xsa --set eval.max_tokens=4096",
        ),
    ]
    assert commands[0].why.startswith("set-up done by this environment; smoke-sized: 5 steps")
    assert used == {0, 4, 5}
