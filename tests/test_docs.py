"""The generated reference pages (docs/hooks.md, docs/plugins.md) match the code they describe."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["hooks.md", "plugins.md"])
def test_generated_docs_are_current(page):
    gen = load_gen_docs()
    path = ROOT / "docs" / page
    assert path.is_file(), f"{path} missing: run python tools/gen_docs.py"
    assert path.read_text(encoding="utf-8") == gen.DOCS[path](), f"{path} is stale: run python tools/gen_docs.py"


def test_every_hook_is_documented_with_its_signature():
    from pgolf_core import hookspecs

    text = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    hooks = [name for name in dir(hookspecs) if name.startswith("pgolf_")]
    assert hooks and all(f"## `{name}(" in text for name in hooks)


def test_readme_shows_the_current_pr414_plugin_order():
    """The README's `pgolf plugins --order recipes/pr414.toml` block is the snapshot test_shipped keeps."""
    snapshot = (ROOT / "tests" / "fixtures" / "plugin_order" / "pr414.txt").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert snapshot in readme, "README's pr414 plugin order is stale: copy tests/fixtures/plugin_order/pr414.txt"
