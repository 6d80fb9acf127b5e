"""zstd: compress the export payload with Zstandard (level 22) instead of zlib-9.

What: `zstandard.ZstdCompressor(level=22).compress(raw)`, one frame, single
thread, as PR #63/#194/#297/#374/#414/#415 do; the artifact is read back with the "zstd" codec.
Why: on int6-in-int8 payloads zstd-22 is a few % smaller than zlib-9, enough to move records
under the 16,000,000-byte cap (PR #297 README; ~5% in R-SG2's README). Not a bpb change by itself.
Missing `zstandard`: a PgolfError when the plugin loads (before training, not after it). The
records silently fell back to zlib-9 instead; `fallback_zlib = true` reproduces that explicitly
(the codec written into the run's log and summary then says "zlib").
`threads` (default 0 = one thread, byte-identical to the records): -1 or n > 0 uses zstd's worker
threads; still one standard frame, read back the same way, but the bytes (and size) differ a little
from the single-threaded output. See docs/benchmarks.md for the time and size on #414 weights.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from pgolf_core import PgolfError, hookimpl


@dataclass
class Config:
    level: int = 22
    fallback_zlib: bool = False  # true: zlib-9 when zstandard is missing (the records' behaviour)
    threads: int = 0  # 0: one thread, the records' exact bytes; -1: all cores; n: n workers


def load_zstandard():
    """The zstandard module, or None when it is not installed."""
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


class Zstd:
    """Zstandard compression of the export payload."""

    name = "zstd"
    version = "0.1.0"
    order = 990
    Config = Config

    @staticmethod
    def validate(config: Config, model=None, recipe=None) -> None:
        """At recipe load (see pgolf_core.hookspecs)."""
        if not 1 <= config.level <= 22:
            raise PgolfError(f"zstd: level must be between 1 and 22, got {config.level}")
        if config.threads < -1:
            raise PgolfError(f"zstd: threads must be -1 (all cores), 0 (one thread) or n > 0, got {config.threads}")

    def __init__(self, config: Config) -> None:
        self.validate(config)
        self.config = config
        if load_zstandard() is None and not config.fallback_zlib:
            raise PgolfError(
                "zstd: the zstandard package is not installed (pip install zstandard); set "
                "plugins.zstd.fallback_zlib = true to write zlib-9 instead, as the records did"
            )

    @hookimpl
    def pgolf_compress(self, raw):
        zstandard = load_zstandard()
        if zstandard is None:
            if not self.config.fallback_zlib:
                raise PgolfError("zstd: the zstandard package is not installed (pip install zstandard)")
            return "zlib", zlib.compress(raw, 9)
        return "zstd", zstandard.ZstdCompressor(level=self.config.level, threads=self.config.threads).compress(raw)
