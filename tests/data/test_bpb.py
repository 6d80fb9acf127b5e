"""BPB byte tables against the official sp1024 tokenizer, with byte counts worked out by hand.

Independent rule for the expected numbers: the UTF-8 length of the normalized text (NFKC, runs of
whitespace collapsed to one space, ends stripped), minus the bytes of characters the tokenizer maps
to <unk> (0 bytes), minus any space right after an <unk> (a boundary token, like BOS).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
import torch

from pgolf_core.data.tokens import build_byte_tables, load_tokenizer
from pgolf_core.types import DataError

BOS, UNK = 1, 3

CASES = [
    # (text, expected bytes, why)
    ("hello world", 11, "plain ASCII: every byte counted"),
    (" leading spaces", 14, "normalization drops the leading space: 'leading spaces'"),
    ("a\n\nb   c", 5, "whitespace runs collapse: 'a b c'"),
    ("The year 2024 had 366 days.", 27, "digits are split one per token but each still 1 byte"),
    ("ﬁne ＡＢＣ", 8, "NFKC: the ligature becomes 'fi', full-width letters ASCII: 'fine ABC'"),
    ("“quoted” — dash", 21, "curly quotes and em dash are 3 bytes each: 12 + 1 + 3 + 1 + 4"),
    ("café au lait", 10, "13 bytes, minus 'é' (2, <unk>), minus the space after <unk> (1)"),
    ("naïve résumé", 9, "15 bytes, minus 'ï', 'é', 'é' (2 each, <unk>); the space follows 've', so it counts"),
    ("日本", 0, "both characters fall outside coverage: one <unk>, 0 bytes"),
    ("emoji 😀 here", 10, "15 bytes, minus the emoji (4, <unk>), minus the space after it (1)"),
]


def normalized_bytes(text: str) -> int:
    return len(" ".join(unicodedata.normalize("NFKC", text).split()).encode())


@pytest.fixture
def official(official_tokenizer: Path):
    sp = load_tokenizer(official_tokenizer)
    return sp, build_byte_tables(sp, 1024)


@pytest.mark.parametrize(("text", "expected", "why"), CASES, ids=[c[0] for c in CASES])
def test_document_bytes_after_bos(official, text: str, expected: int, why: str) -> None:
    sp, tables = official
    ids = sp.encode(text)
    prev, tgt = torch.tensor([BOS, *ids[:-1]]), torch.tensor(ids)
    assert int(tables.target_bytes(prev, tgt, None).sum()) == expected, why
    if UNK not in ids:
        assert expected == normalized_bytes(text)


def test_stream_of_documents(official) -> None:
    """Two documents in one stream, as in the shards: each starts after its own BOS."""
    sp, tables = official
    stream = torch.tensor([BOS, *sp.encode("hello world"), BOS, *sp.encode("good day to you")])
    assert int(tables.target_bytes(stream[:-1], stream[1:], None).sum()) == 11 + 15


def test_leading_space_counts_except_after_a_boundary(official) -> None:
    sp, tables = official
    the, a, lone_space = sp.piece_to_id("▁the"), sp.piece_to_id("a"), sp.piece_to_id("▁")
    assert (the, lone_space) == (11, 940)
    prev = torch.tensor([a, BOS, UNK, 0, a, BOS])
    tgt = torch.tensor([the, the, the, the, lone_space, lone_space])
    got = tables.target_bytes(prev, tgt, None)
    assert got.dtype == torch.int16 and got.tolist() == [4, 3, 3, 3, 1, 0]


def test_tables_match_the_shipped_model(official) -> None:
    sp, tables = official
    assert tables.base_bytes.dtype == torch.int16 and tables.is_boundary.dtype == torch.bool
    assert tables.is_boundary.nonzero().flatten().tolist() == [0, 1, 2, 3]  # pad, bos, eos, unk
    assert int(tables.has_leading_space.sum()) == 476  # pieces starting with "▁"
    assert int(tables.base_bytes[:4].abs().sum()) == 0
    assert tables.base_bytes[943].item() == 1 and tables.base_bytes[11].item() == 3  # "a", "▁the"
    wide = build_byte_tables(sp, 1100)
    assert wide.base_bytes.numel() == 1100 and bool(wide.is_boundary[1024:].all())
    assert int(wide.base_bytes[1024:].abs().sum()) == 0 and not bool(wide.has_leading_space[1024:].any())
    moved = tables.to("cpu")
    assert torch.equal(moved.base_bytes, tables.base_bytes)


def test_tokenizer_errors_and_hash(tmp_path: Path, official_tokenizer: Path) -> None:
    with pytest.raises(DataError, match=r"tokenizer .*nope\.model not found"):
        load_tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    with pytest.raises(DataError, match=r"bad\.model is not a valid SentencePiece \.model file"):
        load_tokenizer(bad)
