"""`pgolf data ...`: prepare the embedded sample, your own text, or the official FineWeb shards.

    pgolf data sample [--cache DIR]
    pgolf data build --text FILE [FILE ...] (--vocab-size N | --tokenizer MODEL) --out DIR
                     [--val-docs N | --val-fraction F]
    pgolf data check PATH [--tokenizer MODEL]
    pgolf data fineweb [--variant sp1024] [--train-shards N] [--out DIR]

Each prints where the data is and how many tokens it holds; point a recipe's `data.path` (and
`data.tokenizer`) at the printed paths. `pgolf data check` is the audit's (`check.py`).
"""

from __future__ import annotations

import argparse
from typing import Any

from pgolf_core.data import check
from pgolf_core.types import DataError


def _summary(data: Any, tokens_train: int, tokens_val: int, **_: int) -> None:
    """Where `data` (a dataset with `.path` and `.tokenizer`) is and how many tokens it holds: a manifest's "stats"."""
    print(f"data:      {data.path}\ntokenizer: {data.tokenizer}\ntokens:    {tokens_train:,} train, {tokens_val:,} val")


def cmd_sample(args: argparse.Namespace) -> int:
    from pgolf_core.data.sample import ensure_sample_data

    sample = ensure_sample_data(args.cache)
    _summary(sample, **sample.manifest["stats"])
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from pgolf_core.data.build import build_dataset

    if bool(args.tokenizer) == bool(args.vocab_size):
        raise DataError("pgolf data build: give --vocab-size N (train a tokenizer) or --tokenizer MODEL, one of them")
    built = build_dataset(
        args.text, args.tokenizer or args.vocab_size, args.out, args.val_fraction, val_docs=args.val_docs
    )
    _summary(built, **built.manifest["stats"])
    print(f"use:       --set data.path={built.path} --set model.vocab_size={built.manifest['tokenizer']['vocab_size']}")
    return 0


def cmd_fineweb(args: argparse.Namespace) -> int:
    from pgolf_core.data.fineweb import download_fineweb
    from pgolf_core.data.tokens import shard_token_count

    got = download_fineweb(args.variant, args.train_shards, args.out)
    _summary(got, *(sum(shard_token_count(f) for f in files) for files in (got.train_files, got.val_files)))
    print(f"files:     {got.downloaded} downloaded, {got.skipped} already present")
    return 0


# Subcommand, help, handler, then each option as (flag, add_argument keywords).
COMMANDS = (
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
    )),
    ("check", *check.COMMAND),
    ("fineweb", "download the official FineWeb shards and tokenizer (needs pgolf[data])", cmd_fineweb, (
        ("--variant", dict(default="sp1024", help="tokenizer family, e.g. sp1024 (default)")),
        ("--train-shards", dict(type=int, default=80, metavar="N",
                                help="training shards of 100M tokens to fetch (default 80, as the official script)")),
        ("--out", dict(default="data", metavar="DIR", help="download root (default ./data)")),
    )),
)  # fmt: skip


def register(subparsers: Any) -> None:
    """Add the `data` command (with `sample`, `build`, `check`, `fineweb`) to the main CLI's subparsers."""
    data = subparsers.add_parser("data", help="prepare data: the embedded sample, your own text, or FineWeb")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{sample,build,check,fineweb}")
    for name, text, func, options in COMMANDS:
        p = sub.add_parser(name, help=text)
        for flag, kwargs in options:
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)
