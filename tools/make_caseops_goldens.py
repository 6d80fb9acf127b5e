"""Regenerate tests/fixtures/caseops_golden.pt from the records' own CaseOps code, and stamp it.

The fixture holds what the records' `lossless_caps.py` (the same file in every CaseOps record folder, PR #1729 to
#1855; the stamp names #1855's) makes of the texts in tests/data/test_caseops.py: `encode_lossless_caps_v2` (the
`lossless_caps_caseops_v1` transform) of each case, `decode_lossless_caps_v2` of each decoder case (None where it
raises), `surface_piece_original_byte_counts` of each encoded case cut into pieces and of the pieces the record's
tokenizer makes of the cases and of three sample documents (their surfaces; needs protobuf), and the sha256 of the
encoding of every document of the embedded sample. pgolf's `pgolf_core.data.caseops` must match it. The record's
module is read from the path the user gives (no record code is copied into this repository); it imports only the
standard library.

    F=PG/records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611
    python tools/make_caseops_goldens.py --lossless-caps $F/lossless_caps.py \\
      --tokenizer $F/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model [--check]

`--check` writes nothing: it regenerates and compares with the committed fixture (stamp aside), exit 1 on a
difference.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import sentencepiece as spm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import load_record  # noqa: E402
from pgolf_core.data.build import sample_documents  # noqa: E402
from tests.data import test_caseops as cases  # noqa: E402
from tools.make_goldens import stamp  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "caseops_golden.pt"
RECORDS = {"pr1855": ("#1855", "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611")}
TRANSFORM = "lossless_caps_caseops_v1"


def make(rec: ModuleType, tokenizer: Path) -> dict[str, Any]:
    encode, decode = rec.get_text_transform(TRANSFORM), rec.get_text_inverse_transform(TRANSFORM)
    encoded = [encode(text) for text in cases.CASES]
    for text, enc in zip(cases.CASES, encoded, strict=True):
        assert decode(enc) == text, f"the record's CaseOps does not round-trip {text!r}"
    decoded: list[str | None] = []
    for text in cases.DECODER_CASES:
        try:
            decoded.append(decode(text))
        except rec.LosslessCapsError:
            decoded.append(None)
    pieces = [
        rec.surface_piece_original_byte_counts(cases.pieces_of(enc, seed=i), text_transform_name=TRANSFORM)
        for i, enc in enumerate(encoded)
    ]
    digests = [hashlib.sha256(encode(doc).encode("utf-8")).hexdigest() for doc in sample_documents()]
    # The sidecar as the records' data script computes it: the record tokenizer's piece surfaces (byte-fallback
    # pieces after the first of a character have none; "  w" keeps the spaces SentencePiece collapses) counted by
    # the record's function. Stored with their surfaces, so the test needs no tokenizer.
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    texts = [*cases.CASES, *sample_documents()[:3]]
    surfaces = [[q.surface for q in sp.encode(encode(t), out_type="proto").pieces] for t in texts]
    counts = [list(rec.surface_piece_original_byte_counts(s, text_transform_name=TRANSFORM)) for s in surfaces]
    return {
        "encoded": encoded,
        "decoded": decoded,
        "piece_bytes": pieces,
        "sample_sha256": digests,
        "record_surfaces": surfaces,
        "record_surface_bytes": counts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lossless-caps", type=Path, required=True, help="the record folder's lossless_caps.py")
    parser.add_argument("--tokenizer", type=Path, required=True, help="the record folder's tokenizers/*.model")
    parser.add_argument("--commit", default="", help="the openai/parameter-golf commit it was read at")
    parser.add_argument("--check", action="store_true", help="compare with the committed fixture, write nothing")
    args = parser.parse_args()
    data = make(load_record(args.lossless_caps, "encode_lossless_caps_v2"), args.tokenizer)
    if args.check:
        old = torch.load(FIXTURE, weights_only=True)
        old.pop("provenance", None)
        same = old == data
        print("caseops_golden.pt: " + ("matches" if same else "DIFFERS from the record's code"))
        return 0 if same else 1
    scripts, commits = {"pr1855": args.lossless_caps}, {"pr1855": args.commit} if args.commit else {}
    data["provenance"] = stamp("tools/make_caseops_goldens.py", FIXTURE.stem, RECORDS, ["pr1855"], scripts, commits)
    torch.save(data, FIXTURE)
    print(f"wrote {FIXTURE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
