"""Embedded sample data: train and score a model with no download and no network.

`sample_text.jsonl.zst` (1.8 MB of CPython's own documentation, PSF license; see
SAMPLE_TEXT_LICENSE.txt and tools/make_sample_text.py) is turned once into a 1024-token tokenizer
and official-format shards by `build.export_dataset`, then cached. The cache directory is named by
a hash of everything that determines its bytes (text, settings, sentencepiece version), so a
changed recipe never reuses stale data, and it is published with one atomic rename, so an
interrupted or concurrent build never leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import sentencepiece as spm
import zstandard

from pgolf_core.data.build import TRAINER_SETTINGS, BuiltDataset, export_dataset
from pgolf_core.data.check import Log, sha256_file
from pgolf_core.data.tokens import HEADER_BYTES
from pgolf_core.types import DataError

SAMPLE_TEXT = Path(__file__).with_name("sample_text.jsonl.zst")
VOCAB_SIZE = 1024
VAL_FRACTION = 0.1
SHARD_TOKENS = 2**18  # several train shards, so the sample exercises shard crossing and wrap-around
BUILD_VERSION = 3  # bump when the build procedure changes in a way the settings below do not capture


# The built sample: `path` holds `fineweb_{val,train}_*.bin`, `tokenizer.model`, `manifest.json`.
SampleData = BuiltDataset


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The argument, else $PGOLF_CACHE, else $XDG_CACHE_HOME/pgolf (default ~/.cache/pgolf)."""
    if cache_dir is None:
        cache_dir = os.environ.get("PGOLF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "pgolf"
    return Path(cache_dir).expanduser()


def sample_key() -> str:
    """Content hash of the inputs of the build: same key, same bytes."""
    if not SAMPLE_TEXT.is_file():
        raise DataError(f"the embedded sample text {SAMPLE_TEXT} is missing; reinstall pgolf (or git checkout it)")
    h = hashlib.sha256(SAMPLE_TEXT.read_bytes())
    settings = {**TRAINER_SETTINGS, "vocab": VOCAB_SIZE, "val": VAL_FRACTION, "shard": SHARD_TOKENS}
    h.update(json.dumps([settings, spm.__version__, BUILD_VERSION], sort_keys=True).encode())
    return h.hexdigest()[:16]


def sample_documents() -> list[str]:
    raw = zstandard.ZstdDecompressor().decompress(SAMPLE_TEXT.read_bytes())
    return [json.loads(line)["text"] for line in raw.decode("utf-8").splitlines()]


def ensure_sample_data(cache_dir: str | Path | None = None, log: Log = print) -> SampleData:
    """The sample dataset, built on first use (a few seconds) and cached under `cache_root()`; a published cache
    entry is checked against its manifest (a user may have deleted files)."""
    path = cache_root(cache_dir) / f"sample-{sample_key()}"
    if (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        for name, info in {**manifest["files"], "tokenizer.model": None}.items():
            if not (f := path / name).is_file() or (info and f.stat().st_size != HEADER_BYTES + 2 * info["tokens"]):
                raise DataError(f"sample data cache {path} is incomplete ({name}); delete that directory to rebuild it")
        return SampleData(path, path / "tokenizer.model", manifest)
    log(f"data: building the embedded sample dataset into {path} (once)")
    source = {"kind": "sample", "file": SAMPLE_TEXT.name, "sha256": sha256_file(SAMPLE_TEXT)}
    docs = sample_documents()
    n_val = int(len(docs) * VAL_FRACTION)
    sample = export_dataset(docs, VOCAB_SIZE, path, val_docs=n_val, shard_tokens=SHARD_TOKENS, source=source, log=log)
    stats = sample.manifest["stats"]
    log(f"data: sample ready: {stats['tokens_train']:,} train / {stats['tokens_val']:,} val tokens in {path}")
    return sample
