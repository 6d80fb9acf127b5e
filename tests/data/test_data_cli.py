"""`pgolf data ...` subcommands: argument parsing, summaries, and user errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from pgolf_core.cli import build_parser, main
from pgolf_core.data.build import sample_documents
from pgolf_core.types import DataError


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_sample_prints_paths_and_counts(sample_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "sample", "--cache", str(sample_cache)]) == 0
    out = capsys.readouterr().out
    assert str(sample_cache) in out and "tokenizer.model" in out and " train, " in out


def test_build_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "docs.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in sample_documents()[:20]), encoding="utf-8")
    code = main(
        [
            "data",
            "build",
            "--text",
            str(text),
            "--vocab-size",
            "256",
            "--out",
            str(tmp_path / "ds"),
            "--val-fraction",
            "0.25",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"data.path={tmp_path / 'ds'}" in out and "model.vocab_size=256" in out
    assert len(list((tmp_path / "ds").glob("fineweb_val_*.bin"))) == 1


def test_fineweb_command_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    args = parse(["data", "fineweb", "--train-shards", "1", "--out", str(tmp_path)])
    assert (args.variant, args.train_shards) == ("sp1024", 1)
    with pytest.raises(DataError, match=r"pip install 'pgolf\[data\]'"):
        args.func(args)


def test_data_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["data"])
    assert exc.value.code == 2 and "sample,build,check,fineweb" in capsys.readouterr().err
