"""CaseOps equals the records' `lossless_caps.py` (PR #1855's folder; the same file from #1729 on): the transform,
its inverse and the per-piece original byte counts, on the golden fixture that tools/make_caseops_goldens.py makes
from the record's code. Also: the inverse undoes the transform on every string, and BPB's bytes are the original's.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch

from pgolf_core.data import caseops
from pgolf_core.data.build import sample_documents
from pgolf_core.data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE, CaseOpsError

GOLDEN = Path(__file__).parents[1] / "fixtures" / "caseops_golden.pt"

# Texts the transform must treat as the record does: every word rule, its edges (one capital, "A", "I", two
# capitals), digits and underscores inside words, punctuation, multi-byte UTF-8 (non-ASCII capitals pass through),
# the reserved characters and the v1 sentinel written literally, whitespace of every kind.
CASES = [
    "", "hello", "Hello", "HELLO", "A", "a", "I am", "OK", "Ok", "oK", "McDonald", "iPhone", "eBay", "NASA's",
    "ABC123def", "x86_64 X86_64", "HeLLo WoRLD", "hELLO", "The NASA Launch", "e.g. U.S.A. -- 3.14!",
    "ÜBER Straße Ärger ÉCOLE naïve", "日本語 Text ＡＢＣ", "emoji 😀 OK 👍🏽", "tab\tand\nnewline\r\n  spaces",
    "\ue001", "a\ue004b", "\ue001\ue002\ue003\ue004", "Title\ue001Word", "\ue000 sentinel \ue000A",
    "CamelCaseWordsAndHTTPServer", "x" * 3 + "Y" * 3 + "z", "don't STOP-me NoW", "İstanbul ǅ ǈ",
]  # fmt: skip

# Transformed texts `encode` never makes, as the record's decoder reads them (the fixture holds its output, or
# None where it raises): markers out of place, escapes of letters, dangling markers.
DECODER_CASES = [
    CAPNEXT + "a", CAPNEXT + "ab", ALLCAPS + "a", TITLE + "a" + CAPNEXT + "b", ESC + "a", ESC + "ab",
    TITLE + ESC + "ab", ALLCAPS + "ab" + ESC + "!c", ALLCAPS + "ab" + ESC + "c", TITLE, ALLCAPS + " ", CAPNEXT,
    CAPNEXT + CAPNEXT + "a", "a" + TITLE + "b", TITLE + TITLE + "a", TITLE + CAPNEXT + "a", ESC, "ab" + ESC,
    "a" + CAPNEXT + "b" + CAPNEXT + "1", ESC + TITLE + "a", TITLE + ESC + "!", ALLCAPS + "ab1cd",
]  # fmt: skip


def pieces_of(text: str, seed: int) -> list[str]:
    """`text` cut into consecutive pieces of 1 to 4 characters, as a tokenizer's pieces cut an encoded text."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 4)
        out.append(text[i : i + n])
        i += n
    return out


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def test_encode_and_decode_equal_the_record(golden):
    for text, want in zip(CASES, golden["encoded"], strict=True):
        assert caseops.encode(text) == want, text
        assert caseops.decode(want) == text


def test_decoder_reads_what_encode_never_writes_as_the_record_does(golden):
    for text, want in zip(DECODER_CASES, golden["decoded"], strict=True):
        if want is None:
            with pytest.raises(CaseOpsError):
                caseops.decode(text)
        else:
            assert caseops.decode(text) == want, repr(text)


def test_original_bytes_equal_the_record(golden):
    for i, (text, want) in enumerate(zip(CASES, golden["piece_bytes"], strict=True)):
        pieces = pieces_of(caseops.encode(text), seed=i)
        assert caseops.original_bytes(pieces) == want, text
        assert sum(want) == len(text.encode("utf-8"))


def test_original_bytes_of_the_record_tokenizers_pieces(golden):
    """The sidecar's values on the pieces the record's CaseOps tokenizer makes (byte-fallback pieces after a
    character's first have an empty surface; a piece's surface keeps the spaces SentencePiece collapses): equal to
    the record's own count, and summing to the original text's bytes."""
    surfaces, want = golden["record_surfaces"], golden["record_surface_bytes"]
    assert any("" in s for s in surfaces) and any(p.startswith("  ") for s in surfaces for p in s)
    texts = [*CASES, *sample_documents()[:3]]
    for text, pieces, counts in zip(texts, surfaces, want, strict=True):
        assert caseops.original_bytes(pieces) == counts, text
        assert sum(counts) == len(text.strip().encode("utf-8"))


def test_the_sample_documents_encode_as_the_record_encodes_them(golden):
    """All 378 documents of the embedded sample (1.7 MB of text) by digest: the record's encoding of each."""
    docs = sample_documents()
    assert len(docs) == len(golden["sample_sha256"])
    for doc, want in zip(docs, golden["sample_sha256"], strict=True):
        encoded = caseops.encode(doc)
        assert hashlib.sha256(encoded.encode("utf-8")).hexdigest() == want
        assert caseops.decode(encoded) == doc


def test_the_transformed_text_is_longer_in_bytes_than_the_original():
    """Why BPB must not count the transformed pieces: on the sample, the markers add bytes that are not text."""
    docs = sample_documents()
    original = sum(len(d.encode("utf-8")) for d in docs)
    transformed = sum(len(caseops.encode(d).encode("utf-8")) for d in docs)
    assert original == 1_711_069 and transformed > original


@pytest.mark.parametrize("seed", range(20))
def test_decode_undoes_encode_on_random_text(seed):
    rng = random.Random(seed)
    alphabet = "aAbBzZ \t\n.,'-0129_" + "ÄäßÉ日😀" + "".join(caseops.RESERVED) + "\ue000"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
    encoded = caseops.encode(text)
    assert caseops.decode(encoded) == text
    assert sum(caseops.original_bytes(pieces_of(encoded, seed))) == len(text.encode("utf-8"))
