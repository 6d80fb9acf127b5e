"""CaseOps (`lossless_caps_caseops_v1`, the records from PR #1729 to #1855): ASCII capitalisation rewritten as
four reserved characters, so that a tokenizer reuses its lowercase pieces for every case variant, and undone
exactly.

Each maximal run of ASCII letters (a word) becomes:
- all lowercase: itself;
- two or more letters, all uppercase: ALLCAPS, then the word in lowercase;
- an uppercase letter followed by lowercase ones: TITLE, then the word in lowercase;
- anything else (mixed case, or one capital letter): TITLE if the first letter is uppercase, then the word in
  lowercase with CAPNEXT before every later letter that was uppercase.
A reserved character found in the text itself is escaped: ESC, then the character. Nothing else changes, so
digits, punctuation and non-ASCII letters (`Ä`, `日`) pass through untouched.

Why it matters for the score: the markers are 3 UTF-8 bytes each and stand for 0 bytes of the original text,
so BPB must count the bytes of the *decoded* text (`original_bytes`, the per-token byte sidecar), never the
bytes of the transformed pieces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
RESERVED = (TITLE, ALLCAPS, CAPNEXT, ESC)  # the tokenizer's user-defined symbols, in this order
_WORD_OR_RESERVED = re.compile("[A-Za-z]+|[\ue001-\ue004]")


class CaseOpsError(ValueError):
    """A transformed text no encoded text can be: a marker where no letter follows, or a dangling escape."""


def _encode_word(match: re.Match[str]) -> str:
    word = match.group()
    if word in RESERVED:
        return ESC + word
    lower = word.lower()
    if word == lower:
        return word
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    if word[0].isupper() and word[1:].islower():
        return TITLE + lower
    rest = "".join(CAPNEXT + c.lower() if c.isupper() else c for c in word[1:])
    return (TITLE if word[0].isupper() else "") + lower[0] + rest


def encode(text: str) -> str:
    """The CaseOps form of `text` (rules in the module docstring)."""
    return _WORD_OR_RESERVED.sub(_encode_word, text)


class Decoder:
    """Reads a transformed text one character at a time and gives back the original characters each stands for
    ("" for a marker), so that a text split into tokenizer pieces is decoded piece by piece with the state
    carried across their boundaries (`original_bytes`)."""

    def __init__(self) -> None:
        self.escaped = False  # the previous character was ESC
        self.mode = ""  # TITLE or ALLCAPS seen, its word not started yet
        self.capnext = False  # CAPNEXT seen, its letter not read yet
        self.in_word = False  # the previous output character was an ASCII letter
        self.allcaps = False  # inside a word opened by ALLCAPS

    def feed(self, ch: str) -> str:
        letter = ch.isascii() and ch.isalpha()
        if self.escaped:
            if self.mode and not letter:
                raise CaseOpsError(f"escaped {ch!r} where a capitalised word must start")
            self.escaped, self.in_word = False, letter
            self.allcaps = self.allcaps and letter
            return ch
        if ch == ESC:
            self.escaped = True
        elif ch in (TITLE, ALLCAPS):
            if self.mode or self.in_word or self.capnext:
                raise CaseOpsError("a word marker inside a word or after another marker")
            self.mode = ch
        elif ch == CAPNEXT:
            if self.capnext:
                raise CaseOpsError("two CAPNEXT markers in a row")
            self.capnext = True
        elif letter and not self.in_word:
            upper = bool(self.mode) or self.capnext
            self.allcaps, self.mode, self.capnext, self.in_word = self.mode == ALLCAPS, "", False, True
            return ch.upper() if upper else ch
        elif letter:
            if self.mode:
                raise CaseOpsError("a word marker inside a word")
            upper, self.capnext = self.allcaps or self.capnext, False
            return ch.upper() if upper else ch
        else:
            if self.mode or self.capnext:
                raise CaseOpsError(f"a capitalisation marker followed by {ch!r}, not by an ASCII letter")
            self.in_word = self.allcaps = False
            return ch
        return ""

    def finish(self) -> None:
        if self.escaped or self.mode or self.capnext:
            raise CaseOpsError("the text ends with a marker or an escape that has nothing after it")


def decode(text: str) -> str:
    """The original text of a CaseOps-encoded `text` (`decode(encode(t)) == t` for every string `t`)."""
    decoder = Decoder()
    out = "".join(decoder.feed(ch) for ch in text)
    decoder.finish()
    return out


def original_bytes(pieces: Iterable[str]) -> list[int]:
    """UTF-8 bytes of the original text each consecutive piece of one encoded text stands for (0 for a marker
    alone): what a per-token byte sidecar holds, and what BPB divides by. Their sum is the byte count of
    `decode("".join(pieces))`."""
    decoder = Decoder()
    counts = [sum(len(decoder.feed(ch).encode("utf-8")) for ch in piece) for piece in pieces]
    decoder.finish()
    return counts
