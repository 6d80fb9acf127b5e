"""`pgolf` command line: run, eval, plugins, new-plugin, data. User errors exit 2 with one clear message."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import Any

from pgolf_core.errors import PgolfError
from pgolf_core.rundir import RunFault, WriteFault

# Exit 2: bad input, or a path the user gave (a file as --out, a read-only folder); other OSErrors keep their traceback.
USER_ERRORS = (PgolfError, FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="TOML recipe, e.g. recipes/baseline.toml")
    p.add_argument("--smoke", action="store_true", help="same plugins, tiny model and step counts (CPU, ~1 min)")
    for flag, dest, metavar, text in (
        ("--set", "overrides", "KEY=VALUE",
         "override a value, e.g. --set train.matrix_lr=0.02 or plugins.ema.decay=0.998"),
        ("--enable", "enable", "PLUGIN", "turn a plugin on"),
        ("--disable", "disable", "PLUGIN", "turn a plugin off"),
        ("--plugins-dir", "plugins_dir", "DIR", "also load plugins from *.py files in DIR (each exporting PLUGIN)"),
    ):  # fmt: skip
        p.add_argument(flag, dest=dest, action="append", default=[], metavar=metavar, help=text)
    p.add_argument("--seed", type=int, help="shortcut for --set run.seed=N")


def _load(args: argparse.Namespace) -> Any:
    from pgolf_core.recipe import load_recipe
    from pgolf_core.registry import plugin_classes

    overrides = list(args.overrides) + ([f"run.seed={args.seed}"] if args.seed is not None else [])
    classes = partial(plugin_classes, plugin_dirs=args.plugins_dir)
    return load_recipe(
        args.recipe, overrides, enable=args.enable, disable=args.disable, smoke=args.smoke, plugin_classes=classes
    )


def cmd_run(args: argparse.Namespace) -> int:
    from pgolf_core.run import train

    summary = train(_load(args), args.out, overwrite=args.overwrite, plugin_dirs=tuple(args.plugins_dir))
    return 1 if summary.get("over_limit") and not args.smoke else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pgolf_core.api import evaluate

    evaluate(_load(args), checkpoint=args.checkpoint, plugin_dirs=tuple(args.plugins_dir))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from pgolf_core import registry

    if args.recipe:
        pm = registry.create_manager(recipe := _load(args), args.plugins_dir)
        rows = [  # "order": 0 only fixes the key order (name, order, version, hooks); version_order sets it
            {"name": p.name, "order": 0, **registry.version_order(p), "hooks": registry.hooks_of(p)}
            for p in registry.ordered_plugins(pm)
        ]
    else:
        rows = registry.describe(args.plugins_dir)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if args.recipe:
        for i, row in enumerate(rows):
            print(f"{i + 1:>2}. {row['name']:<16} order={row['order']:<4} hooks: {', '.join(row['hooks'])}")
        if not rows:
            print(f"{recipe.source}: no plugins enabled (the core model and loop only)")
        return 0
    if not rows:
        print("no plugins installed (entry-point group 'pgolf.plugins')")
    for row in rows:
        if "error" in row:
            print(f"{row['name']}  BROKEN: {row['error']}")
            continue
        print(f"{row['name']} {row['version']}  (order {row['order']}, from {row['origin']})  {row['doc']}")
        print(f"    hooks:  {', '.join(row['hooks']) or '-'}")
        if row["config"]:
            print("    config: " + ", ".join(f"{k}={v!r}" for k, v in row["config"].items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf as parts: core + plugins + recipes.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train, export and score a recipe")
    _recipe_args(p)
    p.add_argument("--out", help="run directory (default: <run.out_dir>/<run.name>-seed<seed>)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in the run directory")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("eval", help="score a checkpoint (final_model.pt, or a run's final_model.ptz) with a recipe")
    _recipe_args(p)
    ckpt = "state dict saved with torch.save, or a .ptz artifact (int8, or int6 via the recipe's plugins)"
    p.add_argument("--checkpoint", required=True, help=ckpt)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("plugins", help="list installed plugins (or a recipe's resolved hook order)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--order", dest="recipe", metavar="RECIPE", help="print the resolved plugin order of RECIPE")
    p.add_argument("--plugins-dir", action="append", default=[], metavar="DIR")
    p.set_defaults(func=cmd_plugins, overrides=[], enable=[], disable=[], smoke=False, seed=None)
    from pgolf_core.ablate.cli import add_parser as add_ablate
    from pgolf_core.authoring import add_parser as add_new_plugin
    from pgolf_core.data.commands import register

    register(sub)
    add_new_plugin(sub)
    add_ablate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RunFault, WriteFault, *USER_ERRORS) as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, RunFault | WriteFault) else 2  # the run started, then failed: files kept
    except KeyboardInterrupt:
        print("pgolf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
