"""`build_dataset` on a user's own .txt / .jsonl text: document rules, layout, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from pgolf_core.data.build import build_dataset, read_documents, sample_documents, training_sentences
from pgolf_core.data.tokens import read_shard, shard_files
from pgolf_core.types import DataError


def quiet(msg: str) -> None:
    pass


def test_txt_documents_are_separated_by_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("First doc\nstill first.\n\n  \t\nSecond doc.\r\n\r\nThird.\n\n\n\n", encoding="utf-8")
    assert read_documents(f) == ["First doc\nstill first.", "Second doc.", "Third."]


def test_jsonl_documents_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "docs.jsonl"
    good.write_text('{"text": "one"}\n\n{"text": "  two  ", "id": 7}\n{"text": "   "}\n', encoding="utf-8")
    assert read_documents(good) == ["one", "two"]
    # json.dumps(ensure_ascii=False) leaves U+2028, U+0085 and \x0c unescaped: lines end at "\n" only.
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"text": "a\u2028b\x85c\x0cd"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert read_documents(odd) == ["a\u2028b\x85c\x0cd"]
    cases = {
        '{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n': r"bad\.jsonl:3: invalid JSON",
        '{"text": "ok"}\n["a list"]\n': r'bad\.jsonl:2: expected a JSON object with a string field "text"',
        '{"body": "no text field"}\n': r"bad\.jsonl:1: expected a JSON object",
        '{"text": 5}\n': r"bad\.jsonl:1: expected a JSON object",
    }
    bad = tmp_path / "bad.jsonl"
    for content, message in cases.items():
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(DataError, match=message):
            read_documents(bad)


def test_unreadable_inputs(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt is not UTF-8"):
        read_documents(latin)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):  # the CLI's exit 2, naming the file
        read_documents(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"x\.csv: expected a \.txt or \.jsonl file, got '\.csv'"):
        read_documents(tmp_path / "x.csv")


def test_training_sentences_fit_the_trainer_limit() -> None:
    doc = "\n".join(f"line {i} " + "word " * 30 for i in range(200)) + "\n" + "x" * 50 + " y" * 3000
    chunks = list(training_sentences([doc], limit=1000))
    assert all(len(c.encode()) <= 1000 for c in chunks) and len(chunks) > 20
    assert "".join(chunks).replace("\n", "").replace(" ", "") == doc.replace("\n", "").replace(" ", "")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    """60 sample documents: 30 as a .txt (paragraph documents) and 30 as a .jsonl."""
    root = tmp_path_factory.mktemp("corpus")
    docs = sample_documents()[:60]
    paragraphs = [p for d in docs[:30] for p in read_documents_from_text(d)]
    (root / "a.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    (root / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[30:]), encoding="utf-8")
    return [root / "a.txt", root / "b.jsonl"], paragraphs + [d.strip() for d in docs[30:]]


def read_documents_from_text(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]


def test_build_dataset_layout(corpus: tuple[list[Path], list[str]], tmp_path: Path) -> None:
    files, docs = corpus
    built = build_dataset(files, 300, tmp_path / "out", val_fraction=0.2, log=quiet, shard_tokens=20_000)
    m = built.manifest
    n_val = int(len(docs) * 0.2)
    assert m["stats"]["docs_total"] == len(docs) and m["stats"]["docs_val"] == n_val
    assert [f["name"] for f in m["source"]["files"]] == ["a.txt", "b.jsonl"]
    sp = spm.SentencePieceProcessor(model_file=str(built.tokenizer))
    assert sp.vocab_size() == m["tokenizer"]["vocab_size"] == 300
    train = shard_files(built.path, "fineweb_train_*.bin")
    assert len(train) == m["stats"]["files_train"] > 1
    assert all(read_shard(p).numel() == 20_000 for p in train[:-1])
    stream = torch.cat([read_shard(p) for p in shard_files(built.path, "fineweb_val_*.bin") + train]).to(torch.int64)
    starts = (stream == 1).nonzero().flatten().tolist() + [stream.numel()]
    assert starts[0] == 0 and len(starts) - 1 == len(docs)  # one BOS per document, in input order
    for i in (0, n_val - 1, n_val, len(docs) - 1):
        assert stream[starts[i] + 1 : starts[i + 1]].tolist() == sp.encode(docs[i])


def test_build_dataset_errors(corpus: tuple[list[Path], list[str]], tmp_path: Path) -> None:
    files, _ = corpus
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        build_dataset(files, 300, occupied, log=quiet)
    with pytest.raises(DataError, match="val_fraction must be between 0 and 1"):
        build_dataset(files, 300, tmp_path / "o1", val_fraction=1.0, log=quiet)
    with pytest.raises(DataError, match="vocab_size must be in 5..65536"):
        build_dataset(files, 70_000, tmp_path / "o2", log=quiet)
    one = tmp_path / "one.txt"
    one.write_text("just one document")
    with pytest.raises(DataError, match="validation takes 1 of 1 non-empty documents: each side needs at least one"):
        build_dataset([one], 300, tmp_path / "o3", log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied", "one.txt"]  # nothing half-built
