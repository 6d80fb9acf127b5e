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


def test_no_file_refers_to_documents_outside_the_repository():
    """The project stands alone: no tracked text names a reference document that is not in the
    repository, or the private section codes ("T" and two digits) and record nicknames ("R-" and a
    code) that stood for them; techniques are described in the project's words with their PR or
    record folder."""
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(
        r"TECHNIQUES\.md|RECIPES\.md|DESIGN\.md|ARCHITECTURE-NOTES|\bT\d\d(\.\d+)?\b|\bR-[A-Z0-9]{2,5}\b"
    )
    offenders = []
    for name in files:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".toml", ".txt", ".cfg"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line) and "TECHNIQUES\\.md|" not in line:
                offenders.append(f"{name}:{number}: {line.strip()[:80]}")
    assert not offenders, "\n".join(offenders)
