"""Generate docs/hooks.md from pgolf_core/hookspecs.py and docs/plugins.md from the installed
plugins' docstrings and configs. `python tools/gen_docs.py` rewrites them; the test suite checks
that the committed files are current."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
import typing
from pathlib import Path

from pgolf_core import Order, Range, hookspecs, registry

ROOT = Path(__file__).resolve().parents[1]


def hooks_markdown() -> str:
    """The catalog by phase: the module docstring (the run loop showing where each hook fires), one
    section per phase with each hook's signature and documentation, then the leaderboard coverage."""
    lines = ["# Hook reference", "", "Generated from `pgolf_core/hookspecs.py` by `tools/gen_docs.py`.", ""]
    lines += [inspect.getdoc(hookspecs) or "", ""]
    phases: dict[str, list[str]] = {}  # phase -> its hooks, in the catalog's order (a run's)
    for name, spec in hookspecs.catalog().items():
        phases.setdefault(spec.pgolf_phase, []).append(name)  # type: ignore[attr-defined]
    for phase, names in phases.items():
        lines += [f"# Phase: {phase}", ""]
        for name in names:
            fn = getattr(hookspecs, name)
            exclusive = " (exclusive)" if name in hookspecs.EXCLUSIVE_HOOKS else ""
            signature = str(inspect.signature(fn)).replace("'", "")  # annotations are strings (PEP 563)
            lines += [f"## `{name}{signature}`{exclusive}", "", docstring_markdown(inspect.getdoc(fn) or ""), ""]
    lines += [(ROOT / "tools" / "hook_coverage.md").read_text(encoding="utf-8")]
    return "\n".join(lines).rstrip() + "\n"


def docstring_markdown(doc: str) -> str:
    """A hook's docstring as Markdown: its prose as written; its `Args:` section (lines indented under
    it) as a list, one item per `name: meaning` (continuation lines indented further); its `Example:`
    section as a fenced Python block. Without this, Markdown would run the indented arguments into one
    paragraph with the "Args:" line above them."""
    out: list[str] = []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        title = lines[i]
        i += 1
        if title not in ("Args:", "Example:"):
            out.append(title)
            continue
        first = i
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            i += 1
        body = textwrap.dedent("\n".join(lines[first:i])).strip("\n")
        out += [f"**{title[:-1]}**", ""]
        if title == "Example:":
            out += ["```python", body, "```"]
        else:
            entries = re.split(r"\n(?=\S)", body)  # an entry starts at the section's indent
            for entry in entries:
                text = " ".join(part.strip() for part in entry.splitlines())
                named = re.match(r"(\w+): (.*)", text)
                out.append(f"- `{named[1]}`: {named[2]}" if named else text)
        out.append("")
    return "\n".join(out).strip()


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
        order = f"{int(cls.order)}, {cls.order.name}" if isinstance(cls.order, Order) else int(cls.order)
        lines += [f"## `{name}` {cls.version} (order {order})", "", inspect.getdoc(module) or "", ""]
        lines += [f"Hooks: {', '.join(f'`{h}`' for h in registry.hooks_of(cls))}", ""]
        if smoke := cls.SMOKE:
            lines += [f"Under `--smoke`: {', '.join(f'`{k} = {v!r}`' for k, v in smoke.items())}", ""]
        if (config := cls.Config) is not None:
            hints = typing.get_type_hints(config, include_extras=True)
            lines += ["| setting | default | valid values |", "|---|---|---|"]
            for f in dataclasses.fields(config):
                lines.append(f"| `{f.name}` | `{registry._field_default(f)!r}` | {valid_values(hints[f.name])} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def valid_values(hint: object) -> str:
    """What a setting's declared type admits: its `Range`, its `Literal` choices, or its type."""
    ranges = [m.text().removeprefix("expected ") for m in getattr(hint, "__metadata__", ()) if isinstance(m, Range)]
    base = typing.get_args(hint)[0] if ranges else hint
    if typing.get_origin(base) is typing.Literal:
        return " ".join(f"`{v!r}`" for v in typing.get_args(base))
    return ", ".join(ranges) or getattr(base, "__name__", str(base)).replace("|", "or")


DOCS = {ROOT / "docs" / "hooks.md": hooks_markdown, ROOT / "docs" / "plugins.md": plugins_markdown}

if __name__ == "__main__":
    for path, make in DOCS.items():
        path.write_text(make(), encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
