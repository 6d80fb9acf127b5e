"""Generate docs/hooks.md from pgolf_core/hookspecs.py and docs/plugins.md from the installed
plugins' docstrings and configs. `python tools/gen_docs.py` rewrites them; the test suite checks
that the committed files are current."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from pathlib import Path

from pgolf_core import hookspecs, registry

ROOT = Path(__file__).resolve().parents[1]


def hooks_markdown() -> str:
    """The catalog by phase: the module docstring (the run loop showing where each hook fires), one
    section per phase with each hook's signature and documentation, then the leaderboard coverage."""
    lines = ["# Hook reference", "", "Generated from `pgolf_core/hookspecs.py` by `tools/gen_docs.py`.", ""]
    lines += [inspect.getdoc(hookspecs) or "", ""]
    for phase, names in hookspecs.PHASES.items():
        lines += [f"# Phase: {phase}", ""]
        for name in names:
            fn = getattr(hookspecs, name)
            exclusive = " (exclusive)" if name in hookspecs.EXCLUSIVE_HOOKS else ""
            signature = str(inspect.signature(fn)).replace("'", "")  # annotations are strings (PEP 563)
            lines += [f"## `{name}{signature}`{exclusive}", "", inspect.getdoc(fn) or "", ""]
    lines += [(ROOT / "tools" / "hook_coverage.md").read_text(encoding="utf-8")]
    return "\n".join(lines).rstrip() + "\n"


def plugins_markdown() -> str:
    lines = [
        "# Built-in plugins",
        "",
        "Generated from each plugin's module docstring and `Config` by `tools/gen_docs.py`.",
        "",
    ]
    for name, source in sorted(registry.discover().items()):
        if source.origin != "pgolf":
            continue
        cls = registry.load_class(source)
        module = importlib.import_module(cls.__module__)
        lines += [f"## `{name}` {cls.version} (order {cls.order})", "", inspect.getdoc(module) or "", ""]
        lines += [f"Hooks: {', '.join(f'`{h}`' for h in registry.hooks_of(cls))}", ""]
        smoke = getattr(cls, "SMOKE", {})
        if smoke:
            lines += [f"Under `--smoke`: {', '.join(f'`{k} = {v!r}`' for k, v in smoke.items())}", ""]
        config = getattr(cls, "Config", None)
        if config is not None:
            lines += ["| setting | default |", "|---|---|"]
            for f in dataclasses.fields(config):
                lines.append(f"| `{f.name}` | `{registry._field_default(f)!r}` |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


DOCS = {ROOT / "docs" / "hooks.md": hooks_markdown, ROOT / "docs" / "plugins.md": plugins_markdown}

if __name__ == "__main__":
    for path, make in DOCS.items():
        path.write_text(make(), encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
