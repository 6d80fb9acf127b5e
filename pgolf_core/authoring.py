"""`pgolf new-plugin NAME`: scaffold a complete, installable technique plugin package.

What it writes (`<dir>/pgolf-NAME/`): a pyproject.toml whose `pgolf.plugins` entry point names the
plugin class `<Name>Plugin`, the plugin module (`src/pgolf_NAME/__init__.py`: a typed `Config`, the
hook of the chosen phase), a test running the shared contract (`pgolf_core.testing.PluginContract`)
plus an exact-math stub, the generator stub of that test's golden file (`tools/make_golden.py`: loads
a record script from a path you give) and a docs page. As generated the plugin installs, is discovered
and passes its own tests: its body is a small placeholder technique with a measurable effect, to be
replaced by the real one (docs/writing-plugins.md does that for PR #1667's attention output gate).
Why a generator: the package layout, the entry point and the contract's settings are the same for
every plugin, and getting one of them wrong fails silently (a plugin never discovered or never acting).
"""

from __future__ import annotations

import argparse
import keyword
import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from pgolf_core.types import PgolfError

# Per phase: the hook the template implements, its settings (key, default, meaning) and its placeholder.
PHASES: dict[str, tuple[str, tuple[tuple[str, str, str], ...], str]] = {
    "build": (
        "pgolf_attention_post",
        (("width", "12", "the gate reads the first `width` channels of the block input"),),
        "a gate per attention head on the attention output, sigmoid(W · x[:width]) from the block input x",
    ),
    "train": (
        "pgolf_post_step",
        (("decay", "0.05", "the per-step shrink of the matrices at full learning rate"),),
        "after each step, matrices shrink by 1 - decay * lr_scale",
    ),
    "export": (
        "pgolf_export_plan",
        (("percentile", "0.9", "the quantile of |w| each matrix row is clipped at in int6"),),
        "the export plan clips each matrix row at a quantile of |w| (with int6_export)",
    ),
    "eval": (
        "pgolf_eval_adapt",
        (("lr", "0.05", "the SGD step size on each scored chunk"),),
        "one SGD step on each validation chunk after it was scored",
    ),
}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def check_name(name: str, target: Path) -> None:
    """A plugin name is a lowercase Python identifier (the module is `pgolf_<name>`), not taken by an
    installed plugin, and its package folder does not exist yet."""
    from pgolf_core.registry import discover

    if not NAME_RE.match(name) or keyword.iskeyword(name):
        raise PgolfError(
            f"new-plugin: {name!r} is not a valid plugin name; expected a lowercase Python identifier "
            "such as attn_gate (letters, digits, underscores, starting with a letter)"
        )
    installed = discover()
    if name in installed:
        raise PgolfError(
            f"new-plugin: a plugin named {name!r} is already installed (from {installed[name].origin}); "
            "choose another name"
        )
    if target.exists():
        raise PgolfError(f"new-plugin: {target} already exists; choose another name or --dir")


def render(name: str, phase: str) -> dict[str, str]:
    """Relative path -> text of every file of the package."""
    if phase not in PHASES:
        raise PgolfError(f"new-plugin: --phase {phase!r}: expected one of {', '.join(PHASES)}")
    hook, settings, placeholder = PHASES[phase]
    values = {
        "name": name,
        "cls": "".join(part.capitalize() for part in name.split("_")),
        "title": name.replace("_", " ").capitalize(),
        "phase": phase,
        "hooks": f"`{hook}`",
        "placeholder": placeholder,
        "settings_rows": "\n".join(f"| `{key}` | {default} | {meaning} |" for key, default, meaning in settings),
        "recipe_table": recipe_table(name, phase),
    }
    templates = resources.files("pgolf_core") / "templates"

    def fill(template: str) -> str:
        return Template((templates / template).read_text(encoding="utf-8")).substitute(values)

    return {
        "pyproject.toml": fill("pyproject.toml.tmpl"),
        f"src/pgolf_{name}/__init__.py": fill(f"{phase}.py.tmpl"),
        f"tests/test_{name}.py": fill(f"test_{phase}.py.tmpl"),
        "tools/make_golden.py": fill("make_golden.py.tmpl"),
        f"docs/{name}.md": fill("doc.md.tmpl"),
    }


def recipe_table(name: str, phase: str) -> str:
    """The `[plugins.<name>]` table with the template's settings, to paste into a recipe."""
    lines = [f"[plugins.{name}]"] + [f"{key} = {default}" for key, default, _ in PHASES[phase][1]]
    if phase == "export":  # the placeholder's plan is read by the int6 format
        lines = ["[plugins.int6_export]", "", *lines]
    return "\n".join(lines)


def new_plugin(name: str, directory: str | Path = ".", phase: str = "build", log: Any = print) -> Path:
    """Write the package `<directory>/pgolf-<name>/`; bad input writes nothing."""
    target = Path(directory) / f"pgolf-{name}"
    files = render(name, phase)  # checks the phase first
    check_name(name, target)
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    log(f"wrote {target}/ ({phase} phase, hook {PHASES[phase][0]}):")
    for rel in files:
        log(f"  {rel}")
    log("\nNext: replace the placeholder technique (the TODOs), then")
    log(f"  pip install -e {target}     # discovered by pgolf: `pgolf plugins` lists {name}")
    log(f"  pytest {target}/tests       # the plugin contract and the exact-math test")
    log("\nPaste into a recipe (or run with --enable " + name + "):\n")
    log(recipe_table(name, phase))
    return target


def add_parser(sub: Any) -> None:
    """`pgolf new-plugin NAME [--dir DIR] [--phase PHASE]`."""
    p = sub.add_parser("new-plugin", help="scaffold an installable technique plugin package pgolf-NAME/")
    p.add_argument("name", help="plugin name: a lowercase Python identifier, e.g. attn_gate")
    p.add_argument("--dir", default=".", help="where to create pgolf-NAME/ (default: the current folder)")
    p.add_argument("--phase", choices=tuple(PHASES), default="build", help="the phase of the hook to write")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    new_plugin(args.name, args.dir, args.phase)
    return 0
