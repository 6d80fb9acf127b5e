"""Ctrl-C stops the test suite even when it lands inside a test that calls `pgolf_core.cli.main` in-process
(`main` swallows KeyboardInterrupt and returns 130, as the real command should). Checked for real: a pytest
subprocess gets SIGINT while such a test sleeps inside `main`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A test that blocks inside main()'s try (the `plugins` command replaced by a sleep), then one that must not run.
GENERATED = """
import time
from pathlib import Path

from pgolf_core import cli

HERE = Path(__file__).parent


def test_blocks_inside_main(monkeypatch):
    def sleep(args):
        (HERE / "started").touch()
        time.sleep(60)
        return 0

    monkeypatch.setattr(cli, "cmd_plugins", sleep)
    assert cli.main(["plugins"]) == 0


def test_after_it():
    (HERE / "next_ran").touch()
"""


def run_and_interrupt(folder: Path, *plugins: str) -> tuple[int, str, float]:
    """Start pytest on the generated file, send SIGINT once the first test sleeps inside main(), and return
    pytest's exit code, its output and the seconds it took to stop."""
    (folder / "test_generated.py").write_text(GENERATED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *plugins, "test_generated.py"]
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (folder / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, time.monotonic() - sent


def test_ctrl_c_inside_an_in_process_main_stops_pytest(tmp_path):
    code, out, seconds = run_and_interrupt(tmp_path, "-p", "tests.conftest")
    assert code == 2, out  # pytest's ExitCode.INTERRUPTED, as for a Ctrl-C anywhere else
    assert "pgolf: interrupted" in out  # the signal did land inside main(), which returned 130
    assert "KeyboardInterrupt" in out and "no tests ran" in out
    assert not (tmp_path / "next_ran").exists(), out
    assert seconds < 10, out


@pytest.mark.slow
def test_without_the_conftest_hooks_the_same_ctrl_c_only_fails_one_test(tmp_path):
    """The failure the hooks fix, so the test above cannot pass by accident: main returns 130, the test
    fails on its assert, and pytest runs the next test and exits 1."""
    code, out, _ = run_and_interrupt(tmp_path)
    assert code == 1, out
    assert "1 failed, 1 passed" in out and (tmp_path / "next_ran").exists()
