"""brotli: byte-shuffle the export payload, then compress it with brotli at quality 11.

What: codec "brotli". Encode: (1) byte shuffle with stride 2: all bytes at even offsets of the
`torch.save` payload, then all bytes at odd offsets (`raw[0::2] + raw[1::2]`; stride s: the s
phases in order), behind a header b"BSHF" + the stride; (2) `brotli.compress(shuffled,
quality=level)` with the library's other defaults (mode GENERIC, lgwin 22, lgblock 0). Decode:
`brotli.decompress`, check the header, and put each phase back. Two header layouts exist:
- `header_bytes = 1` (default; PR #1089 and the records built on it, e.g. #1797/#1851): the stride
  as one byte, b"BSHF\\x02"; an input shorter than the stride is passed through with no header.
- `header_bytes = 2` (PR #1204): the stride as two little-endian bytes, b"BSHF\\x02\\x00", always.
The shuffled payload is the same in both; only the 5th/6th bytes differ, so a blob is read with the
layout it was written with (raw brotli has no magic bytes: the recipe's compressor names the codec).
Why: fewer artifact bytes, so more parameters fit under the cap. The shuffle puts the high and
the low bytes of fp16 values (scales, passthrough tensors) in separate runs; brotli-11 "typically
beats lzma preset=9 by 1-5% on quantized weights" (comment in PR #1089's train_gpt_human.py). Most
records from 03-31 on write it. Measured here on a synthetic 387,074-byte int6 payload (GPTQ-lite
int6 of the tests' integer-draw weights, almost all int8 bytes): brotli-11 181,547 bytes without
the shuffle, 181,949 with it (the shuffle pays on fp16-heavy payloads, not on int8 integers),
lzma-9 191,008, zstd-22 198,355.
Source: PR #1089 (`records/track_10min_16mb/2026-03-28_TurboMuon_EngramLite_ParamBanking`,
`_byte_shuffle`/`_byte_unshuffle`), PR #1204 (`2026-03-31_ParallelResiduals_MiniDepthRecurrence`).
Reported Δbpb: none by itself (bytes under the cap; #1089 README: "optimal entropy coding").
Needs the `brotli` package (`pip install brotli`, extra `pgolf[brotli]`); without it the codec
raises a PgolfError when used, never a silent fallback to another compressor (the records fell
back to lzma). Level: `[export] level` (0..11; the records use 11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeAlias

from pgolf_core import Codec, Order, PgolfError, Plugin, Range, Recipe, Tiny, hookimpl

MAGIC = b"BSHF"
LEVELS = (0, 11)
MISSING = 'codec "brotli" needs the brotli package: pip install brotli'


def load_brotli() -> Any:
    """The brotli module; a PgolfError when it is not installed."""
    try:
        import brotli
    except ImportError as exc:
        raise PgolfError(MISSING) from exc
    return brotli


def shuffle(raw: bytes, stride: int = 2, header_bytes: int = 1) -> bytes:
    """Header + the stride phases of `raw` one after the other (phase p = raw[p::stride])."""
    if header_bytes == 1 and (stride <= 1 or len(raw) < stride):
        return raw  # PR #1089's pass-through: nothing to shuffle, no header
    return MAGIC + stride.to_bytes(header_bytes, "little") + b"".join(raw[p::stride] for p in range(stride))


def unshuffle(data: bytes, stride: int = 2, header_bytes: int = 1) -> bytes:
    """Inverse of `shuffle`: phase p holds ceil((n - p) / stride) bytes and goes to offsets p, p + stride, ...
    (the header's stride is the one used; `stride` only recognises the header-less pass-through)."""
    head = len(MAGIC) + header_bytes
    if not data.startswith(MAGIC) or len(data) < head:
        if header_bytes == 1 and len(data) < stride:
            return data  # the pass-through of an input shorter than the stride
        raise PgolfError(f"brotli: the decompressed payload lacks the byte-shuffle header {MAGIC!r} (got {data[:6]!r})")
    step = int.from_bytes(data[len(MAGIC) : head], "little")
    if step < 2:
        raise PgolfError(f"brotli: byte-shuffle header with stride {step}; expected 2 or more")
    payload = data[head:]
    n = len(payload)
    out = bytearray(n)
    start = 0
    for p in range(step):
        size = (n - p + step - 1) // step
        out[p::step] = payload[start : start + size]
        start += size
    return bytes(out)


def make_codec(stride: int = 2, header_bytes: int = 1) -> Codec:
    """Codec "brotli" for one header layout (see the module docstring)."""

    def encode(raw: bytes, level: int) -> bytes:
        if not LEVELS[0] <= level <= LEVELS[1]:
            raise PgolfError(f"brotli: level={level}: expected a quality in {LEVELS[0]}..{LEVELS[1]}")
        blob: bytes = load_brotli().compress(shuffle(raw, stride, header_bytes), quality=level)
        return blob

    def decode(blob: bytes) -> bytes:
        brotli = load_brotli()
        try:
            data = brotli.decompress(blob)
        except brotli.error as exc:
            raise PgolfError(f"brotli: the blob is not a brotli stream ({exc})") from exc
        return unshuffle(data, stride, header_bytes)

    return Codec("brotli", encode, decode, b"", LEVELS)


@dataclass
class Config:
    stride: Annotated[int, Range(2, 255)] = 2  # bytes per shuffle period (the records: 2, the width of fp16)
    header_bytes: Annotated[int, Range(1, 2)] = 1  # 1: PR #1089 (and #1797/#1851) header; 2: PR #1204 header


class Brotli(Plugin):
    """Byte shuffle + brotli-11 (PR #1089 / #1204)."""

    Config: TypeAlias = Config  # an alias, so that `Config` in this class's annotations names the dataclass
    config: Config  # the base's __init__ stores it
    name = "brotli"
    version = "0.1.0"
    order = Order.CODEC
    # A codec acts when the recipe picks it: the run with the plugin writes brotli-11 (the run without it keeps
    # the default zlib-9; the recipe could not name brotli without the plugin).
    TINY = Tiny(overrides_with=("export.compressor=brotli", "export.level=11"))

    @classmethod
    def check(cls, config: Config, recipe: Recipe) -> None:
        """A missing brotli package is found at recipe load, before anything is trained."""
        if recipe.export.compressor == "brotli":
            try:
                load_brotli()
            except PgolfError:
                raise PgolfError(f'export.compressor="brotli": {MISSING}') from None

    @hookimpl
    def pgolf_codecs(self) -> list[Codec]:
        return [make_codec(self.config.stride, self.config.header_bytes)]
