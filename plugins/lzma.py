"""lzma: compress the export payload as one .xz stream (LZMA2) at the recipe's preset.

What: codec "lzma": `lzma.compress(raw, preset=level)` with Python's defaults, which is what the
records call: the .xz container (`FORMAT_XZ`, so every blob starts with b"\\xfd7zXZ\\x00" and a reader
recognises it), a CRC64 check, one LZMA2 filter with the preset's dictionary and match finder, no
BCJ/delta filter, no `PRESET_EXTREME`, no byte shuffle. Read back with `lzma.decompress`. The
preset is `[export] level` (0..9): PR #549 uses 6, PR #1019 uses 9. Standard library only.
Why: fewer artifact bytes for the same weights, so more parameters fit under the 16,000,000-byte
cap; the records from 03-23 to 03-29 compress the model with it (`Serialized model int6+lzma`).
Measured here on a synthetic 387,074-byte int6 payload (GPTQ-lite int6 of the tests' integer-draw
weights): zlib-9 204,860, zstd-22 198,355, lzma-6 and lzma-9 191,008 bytes (brotli-11: 181,547).
Source: PR #549 (`records/track_10min_16mb/2026-03-23_LeakyReLU_LegalTTT_ParallelMuon`, preset 6),
PR #1019 (`2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072`, preset 9, "from #364/#160"). Reported
Δbpb: none (a size change; neither README isolates the bytes saved against zstd-22).
Settings: none; the preset is the recipe's `[export] level` with `[export] compressor = "lzma"`.
The bytes are the installed liblzma's: its encoder may change between releases (the golden fixture
stamps the version, and the tests compare bytes only under the same one; decoding always works).
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass

from pgolf_core import Codec, Order, PgolfError, Plugin, Tiny, hookimpl

XZ_MAGIC = b"\xfd7zXZ\x00"
LEVELS = (0, 9)


def encode(raw: bytes, level: int) -> bytes:
    """The records' call: an .xz stream at `preset=level` (default check and filters)."""
    if not LEVELS[0] <= level <= LEVELS[1]:
        raise PgolfError(f"lzma: level={level}: expected a preset in {LEVELS[0]}..{LEVELS[1]}")
    return lzma.compress(raw, format=lzma.FORMAT_XZ, preset=level)


def decode(blob: bytes) -> bytes:
    """One .xz stream back to bytes; anything else is a clear error, not a guess at another format."""
    if not blob.startswith(XZ_MAGIC):
        raise PgolfError(f"lzma: the blob does not start with the .xz magic {XZ_MAGIC!r} (got {blob[:6]!r})")
    try:
        return lzma.decompress(blob, format=lzma.FORMAT_XZ)
    except lzma.LZMAError as exc:
        raise PgolfError(f"lzma: the .xz stream is corrupt ({exc})") from exc


CODEC = Codec("lzma", encode, decode, XZ_MAGIC, LEVELS)


@dataclass
class Config:
    pass  # no settings: the core checks `[export] level` against the codec's `levels` (0..9)


class Lzma(Plugin):
    """The .xz (LZMA2) codec of PR #549 / #1019."""

    name = "lzma"
    version = "0.1.0"
    order = Order.CODEC
    Config = Config
    # A codec acts when the recipe picks it: the run with the plugin writes lzma-9 (the run without it keeps
    # the default zlib-9; the recipe could not name lzma without the plugin).
    TINY = Tiny(overrides_with=("export.compressor=lzma", "export.level=9"))

    @hookimpl
    def pgolf_codecs(self) -> list[Codec]:
        return [CODEC]
