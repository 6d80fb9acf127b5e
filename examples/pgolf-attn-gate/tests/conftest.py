"""Run the tests installed (`pip install -e examples/pgolf-attn-gate`: pgolf finds the plugin by its entry
point) or straight from a checkout (the package folder goes on sys.path and pgolf is pointed at a
one-line plugin file, as `pgolf run --plugins-dir` would be)."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def installed() -> bool:
    return any(ep.name == "attn_gate" for ep in importlib.metadata.entry_points(group="pgolf.plugins"))


try:
    import pgolf_attn_gate  # noqa: F401
except ImportError:
    sys.path.insert(0, str(PACKAGE_ROOT))


@pytest.fixture(scope="session")
def plugin_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """() when the package is installed; else a folder holding `attn_gate.py` that exports PLUGIN."""
    if installed():
        return ()
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "attn_gate.py").write_text("from pgolf_attn_gate import AttnGate as PLUGIN  # noqa: F401\n")
    return (str(folder),)
