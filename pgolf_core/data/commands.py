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


def register(subparsers: Any) -> None:
    """Add the `data` command (with `sample`, `build`, `fineweb`) to the main CLI's subparsers."""
    data = subparsers.add_parser("data", help="prepare data: the embedded sample, your own text, or FineWeb")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{sample,build,fineweb}")

    p = sub.add_parser("sample", help="build (once) the embedded sample dataset; no network needed")
    p.add_argument("--cache", metavar="DIR", help="cache directory (default $PGOLF_CACHE or ~/.cache/pgolf)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("build", help="tokenizer + shards from your own .txt / .jsonl files")
    p.add_argument(
        "--text",
        nargs="+",
        required=True,
        metavar="FILE",
        help='.txt (documents separated by blank lines) or .jsonl (one {"text": ...} per line)',
    )
    p.add_argument("--vocab-size", type=int, required=True, metavar="N", help="tokenizer vocabulary, e.g. 1024")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output directory")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="leading fraction of documents held out for validation (default 0.1)",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("fineweb", help="download the official FineWeb shards and tokenizer (needs pgolf[data])")
    p.add_argument("--variant", default="sp1024", help="tokenizer family, e.g. sp1024 (default)")
    p.add_argument(
        "--train-shards",
        type=int,
        default=80,
        metavar="N",
        help="training shards of 100M tokens to fetch (default 80, as the official script)",
    )
    p.add_argument("--out", default="data", metavar="DIR", help="download root (default ./data)")
    p.set_defaults(func=cmd_fineweb)


def _summary(path: Path, tokenizer: Path, train_tokens: int, val_tokens: int) -> None:
    print(f"data:      {path}")
    print(f"tokenizer: {tokenizer}")
    print(f"tokens:    {train_tokens:,} train, {val_tokens:,} val")


def cmd_sample(args: argparse.Namespace) -> int:
    from pgolf_core.data.sample import ensure_sample_data

    sample = ensure_sample_data(args.cache)
    _summary(sample.path, sample.tokenizer, sample.train_tokens, sample.val_tokens)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from pgolf_core.data.build import build_dataset

    built = build_dataset(args.text, args.vocab_size, args.out, val_fraction=args.val_fraction)
    stats = built.manifest["stats"]
    _summary(built.path, built.tokenizer, stats["tokens_train"], stats["tokens_val"])
    print(f"use:       --set data.path={built.path} --set model.vocab_size={built.manifest['tokenizer']['vocab_size']}")
    return 0


def cmd_fineweb(args: argparse.Namespace) -> int:
    from pgolf_core.data.fineweb import download_fineweb
    from pgolf_core.data.shards import shard_token_count

    got = download_fineweb(args.variant, args.train_shards, args.out)
    train, val = (sum(shard_token_count(f) for f in files) for files in (got.train_files, got.val_files))
    _summary(got.path, got.tokenizer, train, val)
    print(f"files:     {got.downloaded} downloaded, {got.skipped} already present")
    return 0
