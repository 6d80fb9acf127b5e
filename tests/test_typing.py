"""A plugin is typed with pgolf_core's public names only and passes `mypy --strict` on its own file: every built-in
plugin, the example third-party package (examples/pgolf-attn-gate) and what `pgolf new-plugin` writes for each
phase. Why a test: the public types (`pgolf_core.types`) are the contract a plugin author codes against; a hook
argument typed with a private or missing name shows up here, not in an author's editor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pgolf_core import authoring

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~15 s: mypy from a cold cache over 25 files and the four scaffolds
def test_plugins_the_example_and_the_scaffold_pass_mypy_strict(tmp_path):
    files = sorted(str(p) for p in (ROOT / "plugins").glob("*.py") if p.name != "__init__.py")
    files.append(str(ROOT / "examples" / "pgolf-attn-gate" / "pgolf_attn_gate" / "__init__.py"))
    for phase in authoring.PHASES:  # the scaffold's plugin module, as `pgolf new-plugin --phase PHASE` writes it
        rel, text = next((r, t) for r, t in authoring.render(f"typed_{phase}", phase).items() if r.startswith("src/"))
        path = tmp_path / phase / rel
        path.parent.mkdir(parents=True)
        path.write_text(text, encoding="utf-8")
        files.append(str(path))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir", str(tmp_path / "cache"),
         *files],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no issues found in {len(files)} source files" in result.stdout
