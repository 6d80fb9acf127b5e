"""The third-party example package examples/pgolf-attn-gate, used the way an outsider's package is: built
and installed with pip into a folder of its own (never into this environment), then found by pgolf through
its `pgolf.plugins` entry point alone, in fresh interpreters whose PYTHONPATH holds that folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "pgolf-attn-gate"
DIST = "pgolf-attn-gate"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The package copied out of the tree (pip's build writes build/ and *.egg-info next to the sources)
    and installed with `pip install --no-deps --no-build-isolation --target SITE`."""
    base = tmp_path_factory.mktemp("example_package")
    src = base / "src"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = base / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run([*pip, "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return {"base": base, "src": src, "site": site}


def run(args: list[str], site: Path | None, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installs_with_its_entry_point(installed: dict[str, Path]) -> None:
    site = installed["site"]
    assert (site / "pgolf_attn_gate" / "__init__.py").is_file()
    (dist_info,) = site.glob("pgolf_attn_gate-0.1.0.dist-info")
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "[pgolf.plugins]\nattn_gate = pgolf_attn_gate:AttnGate" in entry_points


def test_pgolf_plugins_lists_it(installed: dict[str, Path]) -> None:
    done = run(["-m", "pgolf", "plugins"], installed["site"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("attn_gate "))
    assert lines[at].startswith(f"attn_gate 0.1.0  (order 60, from {DIST})  Per-head attention output gate")
    assert lines[at + 1].split() == ["hooks:", "pgolf_attention_post"]
    assert lines[at + 2].strip() == "config: variant='out_gate', width=12, init_std=0.0, scale=1.0"
    without = run(["-m", "pgolf", "plugins"], None)  # not installed here: pgolf finds it only through the folder
    already = any(line.startswith("attn_gate ") for line in without.stdout.splitlines())
    if not already:  # (a developer may have run `pip install -e examples/pgolf-attn-gate` into this environment)
        assert without.returncode == 0 and "xsa " in without.stdout


def _summary_of_run(installed: dict[str, Path], name: str, extra: list[str]) -> tuple[dict, str]:
    out = installed["base"] / name
    args = ["-m", "pgolf", "run", "recipes/pr414.toml", "--smoke", "--enable", "attn_gate", "--out", str(out)]
    done = run([*args, "--set", "train.iterations=4", "--set", "eval.max_tokens=4096", *extra], installed["site"])
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads((out / "summary.json").read_text()), (out / "train.log").read_text()


def check_run(summary: dict, log: str) -> None:
    names = [p["name"] for p in summary["plugins"]]
    assert {"name": "attn_gate", "version": "0.1.0", "order": 60} in summary["plugins"]
    assert names.index("xsa") < names.index("attn_gate")  # the gate sees XSA's output, as in PR #1667
    assert summary["steps"] == 4 and summary["artifact_format"].startswith("int6")
    for key in ("val_bpb", "roundtrip_val_bpb", "sliding_val_bpb"):
        assert 0 < summary[key] < 10, key
    assert "attn_gate: variant:out_gate width:12 init_std:0.0 scale:1.0" in log  # the core logs its settings


def test_pr414_with_it_trains_exports_and_scores(installed: dict[str, Path]) -> None:
    """`pgolf run recipes/pr414.toml --smoke --enable attn_gate` with 4 layers and 4 steps (~10 s)."""
    small = ["model.num_layers=4", "plugins.value_embed.layers=[2, 3]", "train.warmup_steps=1"]
    summary, log = _summary_of_run(installed, "run4", [a for s in small for a in ("--set", s)])
    check_run(summary, log)


@pytest.mark.slow
def test_pr414_smoke_with_it(installed: dict[str, Path]) -> None:
    """The smoke model as it is (11 layers), 4 steps (~25 s)."""
    summary, log = _summary_of_run(installed, "smoke", [])
    check_run(summary, log)


@pytest.mark.slow
def test_its_own_tests_pass(installed: dict[str, Path]) -> None:
    """The package's tests (golden values from the records, the plugin contract) against the installed copy (~30 s)."""
    # run from outside the source folder, so that `import pgolf_attn_gate` finds the installed copy
    done = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "src/tests"], installed["site"], cwd=installed["base"])
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout and "skipped" not in done.stdout and "failed" not in done.stdout
