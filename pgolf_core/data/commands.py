"""`pgolf data ...`: prepare the embedded sample, your own text, or the official FineWeb shards.

    pgolf data sample [--cache DIR]
    pgolf data build --text FILE [FILE ...] --vocab-size N --out DIR [--val-fraction F]
    pgolf data fineweb [--variant sp1024] [--train-shards N] [--out DIR]

Each prints where the data is and how many tokens it holds; point a recipe's `data.path` (and
`data.tokenizer`) at the printed paths. Modules are imported in the handlers so `pgolf --help`
stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _summary(path: Path, tokenizer: Path, train_tokens: int, val_tokens: int) -> None:
    print(f"data:      {path}\ntokenizer: {tokenizer}\ntokens:    {train_tokens:,} train, {val_tokens:,} val")


def cmd_sample(args: argparse.Namespace) -> int:
    from pgolf_core.data.sample import ensure_sample_data

    sample = ensure_sample_data(args.cache)
    _summary(sample.path, sample.tokenizer, sample.train_tokens, sample.val_tokens)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from pgolf_core.data.build import build_dataset

    built = build_dataset(args.text, args.vocab_size, args.out, val_fraction=args.val_fraction)
    _summary(built.path, built.tokenizer, built.train_tokens, built.val_tokens)
    print(f"use:       --set data.path={built.path} --set model.vocab_size={built.manifest['tokenizer']['vocab_size']}")
    return 0


def cmd_fineweb(args: argparse.Namespace) -> int:
    from pgolf_core.data.fineweb import download_fineweb
    from pgolf_core.data.tokens import shard_token_count

    got = download_fineweb(args.variant, args.train_shards, args.out)
    train, val = (sum(shard_token_count(f) for f in files) for files in (got.train_files, got.val_files))
    _summary(got.path, got.tokenizer, train, val)
    print(f"files:     {got.downloaded} downloaded, {got.skipped} already present")
    return 0


# Subcommand, help, handler, then each option as (flag, add_argument keywords).
COMMANDS = (
    ("sample", "build (once) the embedded sample dataset; no network needed", cmd_sample, (
        ("--cache", dict(metavar="DIR", help="cache directory (default $PGOLF_CACHE or ~/.cache/pgolf)")),
    )),
    ("build", "tokenizer + shards from your own .txt / .jsonl files", cmd_build, (
        ("--text", dict(nargs="+", required=True, metavar="FILE",
                        help='.txt (documents separated by blank lines) or .jsonl (one {"text": ...} per line)')),
        ("--vocab-size", dict(type=int, required=True, metavar="N", help="tokenizer vocabulary, e.g. 1024")),
        ("--out", dict(required=True, metavar="DIR", help="new (or empty) output directory")),
        ("--val-fraction", dict(type=float, default=0.1, metavar="F",
                                help="leading fraction of documents held out for validation (default 0.1)")),
    )),
    ("fineweb", "download the official FineWeb shards and tokenizer (needs pgolf[data])", cmd_fineweb, (
        ("--variant", dict(default="sp1024", help="tokenizer family, e.g. sp1024 (default)")),
        ("--train-shards", dict(type=int, default=80, metavar="N",
                                help="training shards of 100M tokens to fetch (default 80, as the official script)")),
        ("--out", dict(default="data", metavar="DIR", help="download root (default ./data)")),
    )),
)  # fmt: skip


def register(subparsers: Any) -> None:
    """Add the `data` command (with `sample`, `build`, `fineweb`) to the main CLI's subparsers."""
    data = subparsers.add_parser("data", help="prepare data: the embedded sample, your own text, or FineWeb")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{sample,build,fineweb}")
    for name, text, func, options in COMMANDS:
        p = sub.add_parser(name, help=text)
        for flag, kwargs in options:
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)
