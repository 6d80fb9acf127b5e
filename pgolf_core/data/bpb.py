"""Byte lookup tables for the bits-per-byte metric, with the challenge's exact rules.

BPB divides the summed NLL by the UTF-8 bytes of the (NFKC-normalized) text the targets spell, so
scores stay comparable across tokenizers. A piece's bytes are its text without one leading "▁"; the
"▁" itself is one space byte, except right after a boundary token (BOS, <unk>, other control ids),
where no space is counted. <unk> and control ids count 0 bytes. Byte pieces count 1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

# Bytes each target spells given the token before it: one rule, shared with the evaluator.
from pgolf_core.evaluation import token_bytes as token_bytes
from pgolf_core.types import DataError

SPACE = "\u2581"


@dataclass(frozen=True)
class ByteTables:
    """Per-id tables: `base_bytes` (int16), `has_leading_space` (bool), `is_boundary` (bool)."""

    base_bytes: torch.Tensor
    has_leading_space: torch.Tensor
    is_boundary: torch.Tensor

    def to(self, device: torch.device | str) -> ByteTables:
        return ByteTables(*(t.to(device) for t in (self.base_bytes, self.has_leading_space, self.is_boundary)))


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> spm.SentencePieceProcessor:
    """The tokenizer, refused when its vocabulary is not `vocab_size` (the score would be of other text)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"tokenizer {path} not found (expected a SentencePiece .model file)")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"tokenizer {path} is not a valid SentencePiece .model file ({exc})") from exc
    if vocab_size is not None and int(sp.vocab_size()) != vocab_size:
        raise DataError(f"[model] vocab_size = {vocab_size} but tokenizer {path} has {int(sp.vocab_size())} pieces")
    return sp


def tokenizer_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int) -> ByteTables:
    """Tables of size max(tokenizer vocab, model vocab); ids the tokenizer lacks are boundaries of 0 bytes."""
    n = max(int(sp.vocab_size()), vocab_size)
    base = np.zeros(n, dtype=np.int16)
    lead = np.zeros(n, dtype=np.bool_)
    boundary = np.ones(n, dtype=np.bool_)
    for i in range(int(sp.vocab_size())):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        piece = sp.id_to_piece(i)  # byte pieces are "<0xNN>": never a leading "▁", always one byte
        lead[i] = piece.startswith(SPACE)
        base[i] = 1 if sp.is_byte(i) else len(piece.removeprefix(SPACE).encode())
    return ByteTables(torch.from_numpy(base), torch.from_numpy(lead), torch.from_numpy(boundary))
