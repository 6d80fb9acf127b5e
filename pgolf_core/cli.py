"""`pgolf` command line: run, eval, plugins, new-plugin, ablate, data. User errors exit 2 with one clear message.

`pgolf data ...` prepares data, and every one of its commands ends by printing where the data is, how many tokens
it holds, and the `--set` options that point a recipe at it:

    pgolf data sample [--cache DIR]
    pgolf data build --text FILE [FILE ...] (--vocab-size N | --tokenizer MODEL) --out DIR
                     [--val-docs N | --val-fraction F] [--caseops]
    pgolf data check PATH [--tokenizer MODEL]
    pgolf data fineweb [--variant sp1024] [--train-shards N] [--out DIR] [--repo-id ID] [--remote-root DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgolf_core import __version__, evaluate, load_recipe, records, registry, train
from pgolf_core.data import check
from pgolf_core.data.build import BuiltDataset, build_dataset, ensure_sample_data
from pgolf_core.data.fineweb import KNOWN_REPOS, download_fineweb
from pgolf_core.types import DataError, PgolfError, Recipe, RunFault, WriteFault

# Exit 2: bad input, or a path the user gave (a file as --out, a read-only folder); other OSErrors keep their traceback.
USER_ERRORS = (PgolfError, FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _load(args: argparse.Namespace) -> Recipe:
    overrides = list(args.overrides) + ([f"run.seed={args.seed}"] if args.seed is not None else [])
    return load_recipe(
        args.recipe, overrides, enable=args.enable, disable=args.disable, smoke=args.smoke, plugin_dirs=args.plugins_dir
    )


def cmd_run(args: argparse.Namespace) -> int:
    recipe = _load(args)
    # `--dry-run` (not a `pgolf recipe show` command): the very command line about to be run, its --out, --seed
    # and toggles included, shows what it would write as recipe.resolved.toml and where, with nothing trained or
    # written; a second command would repeat every recipe flag. The plugins load, so a conflict fails here too.
    if args.dry_run:
        plugins = registry.ordered_plugins(registry.create_manager(recipe, args.plugins_dir))
        summary = {"manifest": {"git_sha": records.git_sha(), "recipe_sha256": recipe.sha256()}}
        print(f"# Dry run: nothing trained or written. Run folder: {args.out or records.default_out(recipe)}")
        print(records.resolved_recipe_text(recipe, plugins, summary), end="")
        return 0
    summary = train(recipe, args.out, overwrite=args.overwrite, plugin_dirs=tuple(args.plugins_dir), force=args.force)
    return 1 if summary.get("over_limit") and not args.smoke else 0


def eval_inputs(args: argparse.Namespace) -> tuple[str, str]:
    """(recipe, checkpoint) that `pgolf eval` scores. A run folder (or a checkpoint inside one) brings its own
    recipe.resolved.toml: the recipe file it came from may build another model (a --smoke run is 128 wide where
    the file says 512), so the run's resolved settings are the only safe default."""
    if not (given := args.recipe or args.checkpoint) or (given.endswith(".toml") and not args.checkpoint):
        raise PgolfError("pgolf eval: expected a run folder, a checkpoint inside one, or RECIPE --checkpoint FILE")
    if given.endswith(".toml"):
        return given, args.checkpoint
    if not (path := Path(given)).exists():
        raise PgolfError(f"pgolf eval {given}: no such run folder or checkpoint")
    if not path.is_dir() and args.recipe and args.checkpoint:
        raise PgolfError(f"pgolf eval {given} --checkpoint {args.checkpoint}: two checkpoints; give one")
    checkpoint = (args.checkpoint or str(path / "final_model.ptz")) if path.is_dir() else given
    if not (resolved := (path if path.is_dir() else path.parent) / "recipe.resolved.toml").is_file():
        raise PgolfError(
            f"{resolved.parent}: not a run directory, no recipe.resolved.toml (every finished run writes one); "
            f"score with the recipe it was trained with: pgolf eval RECIPE --checkpoint {checkpoint}"
        )
    if args.smoke:
        raise PgolfError(f"--smoke: {resolved} already holds the run's settings, smoke ones included; drop --smoke")
    return str(resolved), checkpoint


def cmd_eval(args: argparse.Namespace) -> None:
    """Score a checkpoint on the recipe's validation data. pgolf eval RUN_DIR reads RUN_DIR/recipe.resolved.toml
    (the run's recipe with every default, --set and --smoke setting filled in) and RUN_DIR/final_model.ptz;
    pgolf eval RUN_DIR/final_model.pt (or --checkpoint FILE alone) takes the recipe next to the checkpoint;
    pgolf eval RECIPE --checkpoint FILE scores with that recipe instead (add --smoke if the run had it).
    --set, --enable and --disable apply on top of either recipe. (This docstring is the command's --help.)"""
    args.recipe, checkpoint = eval_inputs(args)
    evaluate(_load(args), checkpoint=checkpoint, plugin_dirs=tuple(args.plugins_dir))


def cmd_plugins(args: argparse.Namespace) -> None:
    if args.recipe:
        pm = registry.create_manager(recipe := _load(args), args.plugins_dir)
        # the hooks each plugin registered (a plugin with two forms registers those of its configured form);
        # "order": 0 only fixes the key order (name, order, version, hooks): version_order sets it
        hooks = {p: sorted(h.name for h in pm.get_hookcallers(p) or []) for p in registry.ordered_plugins(pm)}
        rows = [{"name": p.name, "order": 0, **registry.version_order(p), "hooks": hs} for p, hs in hooks.items()]
        empty = f"{recipe.source}: no plugins enabled (the core model and loop only)"
    else:
        rows = registry.describe(args.plugins_dir)
        empty = "no plugins installed (entry-point group 'pgolf.plugins')"
    if args.json or not rows:
        print(json.dumps(rows, indent=2, default=str) if args.json else empty)
        return
    for i, row in enumerate(rows, 1):
        if args.recipe:
            print(f"{i:>2}. {row['name']:<16} order={row['order']:<4} hooks: {', '.join(row['hooks'])}")
        elif "error" in row:
            print(f"{row['name']}  BROKEN: {row['error']}")
        else:
            print(f"{row['name']} {row['version']}  (order {row['order']}, from {row['origin']})  {row['doc']}")
            print(f"    hooks:  {', '.join(row['hooks']) or '-'}")
            if row["config"]:
                print("    config: " + ", ".join(f"{k}={v!r}" for k, v in row["config"].items()))


def _summary(data: BuiltDataset) -> None:
    """Where `data` is, how many tokens it holds, and the settings that point a recipe at it."""
    stats, vocab = data.manifest["stats"], data.manifest["tokenizer"]["vocab_size"]
    sidecars = any(entry.get("kind") == "bytes" for entry in data.manifest["files"].values())
    print(f"data:      {data.path}\ntokenizer: {data.tokenizer}")
    print(f"tokens:    {stats['tokens_train']:,} train, {stats['tokens_val']:,} val")
    use = f"--set data.path={data.path} --set data.tokenizer={data.tokenizer} --set model.vocab_size={vocab}"
    print(f"use:       {use}" + " --set data.val_bytes_pattern=fineweb_val_bytes_*.bin" * sidecars)


def cmd_sample(args: argparse.Namespace) -> None:
    _summary(ensure_sample_data(args.cache))


def cmd_build(args: argparse.Namespace) -> None:
    if bool(args.tokenizer) == bool(args.vocab_size):
        raise DataError("pgolf data build: give --vocab-size N (train a tokenizer) or --tokenizer MODEL, one of them")
    tokenizer = args.tokenizer or args.vocab_size
    _summary(build_dataset(args.text, tokenizer, args.out, args.val_fraction, args.val_docs, caseops=args.caseops))


def cmd_fineweb(args: argparse.Namespace) -> None:
    _summary(download_fineweb(args.variant, args.train_shards, args.out, args.repo_id, args.remote_root))


# `pgolf data` subcommands: name, help, handler, then each option as (flag, add_argument keywords).
DATA_COMMANDS = (
    ("sample", "build (once) the embedded sample dataset; no network needed", cmd_sample, (
        ("--cache", dict(metavar="DIR", help="cache directory (default $PGOLF_CACHE or ~/.cache/pgolf)")),
    )),
    ("build", "tokenizer + shards + manifest from your own .txt / .jsonl files", cmd_build, (
        ("--text", dict(nargs="+", required=True, metavar="FILE",
                        help='.txt (documents separated by blank lines) or .jsonl (one {"text": ...} per line)')),
        ("--vocab-size", dict(type=int, metavar="N", help="train a tokenizer of N pieces, e.g. 1024")),
        ("--tokenizer", dict(metavar="MODEL", help="or use this SentencePiece .model")),
        ("--out", dict(required=True, metavar="DIR", help="new (or empty) output directory")),
        ("--val-docs", dict(type=int, metavar="N", help="the first N documents are validation (the records: 50000)")),
        ("--val-fraction", dict(type=float, default=0.1, metavar="F",
                                help="else this leading fraction of the documents (default 0.1)")),
        ("--caseops", dict(action="store_true", help="CaseOps transform, with the validation byte sidecar")),
    )),
    ("check", *check.COMMAND),
    ("fineweb", "download published FineWeb shards and tokenizer (needs pgolf[data])", cmd_fineweb, (
        ("--variant", dict(default="sp1024", help=f"{', '.join(KNOWN_REPOS)} (default sp1024), any with --repo-id")),
        ("--train-shards", dict(type=int, default=80, metavar="N",
                                help="training shards of 100M tokens to fetch (default 80, as the official script)")),
        ("--out", dict(default="data", metavar="DIR", help="download root (default ./data)")),
        ("--repo-id", dict(metavar="ID", help="another Hugging Face dataset of this layout (default: the variant's)")),
        ("--remote-root", dict(default="datasets", metavar="DIR", help="its manifest.json folder (default: datasets)")),
    )),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgolf", description="Parameter Golf as parts: core + plugins + recipes.")
    # The version every run's summary records (manifest "pgolf_version"); a test holds it equal to the installed
    # distribution's metadata, so the two cannot drift apart.
    parser.add_argument("--version", action="version", version=f"pgolf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, export and score a recipe")
    run.add_argument("recipe", help="TOML recipe, e.g. recipes/baseline.toml")
    ev = sub.add_parser("eval", help="score a run's checkpoint (or any, with a recipe)", description=cmd_eval.__doc__)
    target = "a run folder, a checkpoint, or a recipe"
    ev.add_argument("recipe", nargs="?", metavar="RUN_DIR|CHECKPOINT|RECIPE", help=target)
    sets = "override a value, e.g. --set train.matrix_lr=0.02 or plugins.ema.decay=0.998"
    dirs = "also load plugins from *.py files in DIR (each exporting PLUGIN)"
    # the recipe options `run` and `eval` share, in this order after their recipe argument
    for p in (run, ev):
        p.add_argument("--smoke", action="store_true", help="same plugins, tiny model and step counts (CPU, ~1 min)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=sets)
        p.add_argument("--enable", action="append", default=[], metavar="PLUGIN", help="turn a plugin on")
        p.add_argument("--disable", action="append", default=[], metavar="PLUGIN", help="turn a plugin off")
        p.add_argument("--plugins-dir", action="append", default=[], metavar="DIR", help=dirs)
        p.add_argument("--seed", type=int, help="shortcut for --set run.seed=N")
    run.add_argument("--out", help="run directory (default: <run.out_dir>/<run.name>[-<toggles>]-seed<seed>)")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in the run directory")
    force = "run even when the memory or time estimate says this machine cannot"
    run.add_argument("--force", action="store_true", help=force)
    run.add_argument("--dry-run", action="store_true", help="print the resolved recipe and run folder, then stop")
    run.set_defaults(func=cmd_run)
    ckpt = "a torch.save state dict or a .ptz artifact (default with RUN_DIR: RUN_DIR/final_model.ptz)"
    ev.add_argument("--checkpoint", help=ckpt)
    ev.set_defaults(func=cmd_eval)
    p = sub.add_parser("plugins", help="list installed plugins (or a recipe's resolved hook order)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--order", dest="recipe", metavar="RECIPE", help="print the resolved plugin order of RECIPE")
    p.add_argument("--plugins-dir", action="append", default=[], metavar="DIR")
    p.set_defaults(func=cmd_plugins, overrides=[], enable=[], disable=[], smoke=False, seed=None)
    data = sub.add_parser("data", help="prepare data: the embedded sample, your own text, or FineWeb")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{sample,build,check,fineweb}")
    for name, text, func, options in DATA_COMMANDS:
        p = data_sub.add_parser(name, help=text)
        for flag, kwargs in options:
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)
    from pgolf_core.ablate.cli import add_parser as add_ablate
    from pgolf_core.authoring import add_parser as add_new_plugin

    for add in (add_new_plugin, add_ablate):
        add(sub)
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
