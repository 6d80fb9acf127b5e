"""`pgolf data fineweb`: manifest-driven, resumable, and a clear error offline.

No network here, so the download itself is not exercised; what is: the manifest drives which files
are needed, files already complete are kept and never re-fetched (the resume path, which needs no
network), an incomplete shard is not trusted, and with the Hub unreachable the command exits 2 with
a message that names the file and keeps what is already on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf_core.data.fineweb import dataset_name, download_fineweb
from pgolf_core.data.shards import write_shard
from pgolf_core.errors import DataError

NAME = "fineweb10B_sp1024"


def official_layout(out: Path, train_files: int = 3, val_files: int = 1) -> dict[str, Path]:
    """The published export as `data/cached_challenge_fineweb.py` lays it out locally."""
    manifest = {
        "datasets": [
            {
                "name": NAME,
                "tokenizer_name": "sp_bpe_1024",
                "stats": {"files_train": train_files, "files_val": val_files},
            }
        ],
        "tokenizers": [
            {
                "name": "sp_bpe_1024",
                "model_path": "tokenizers/fineweb_1024_bpe.model",
                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab",
            }
        ],
    }
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(manifest))
    files = {"manifest": out / "manifest.json"}
    for split, count in (("val", val_files), ("train", train_files)):
        for i in range(count):
            path = out / "datasets" / NAME / f"fineweb_{split}_{i:06d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            files[f"{split}{i}"] = write_shard(path, list(range(100 + i)))
    (out / "tokenizers").mkdir()
    for suffix in ("model", "vocab"):
        files[suffix] = out / "tokenizers" / f"fineweb_1024_bpe.{suffix}"
        files[suffix].write_bytes(b"tokenizer " + suffix.encode())
    return files


def test_complete_files_are_kept_and_the_manifest_picks_them(tmp_path):
    files = official_layout(tmp_path / "data")
    before = {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in files.items()}
    got = download_fineweb("sp1024", 2, tmp_path / "data", log=lambda msg: None)
    assert got.downloaded == 0 and got.skipped == 1 + 1 + 2 + 2  # manifest, val, 2 train, tokenizer x2
    assert got.path == tmp_path / "data" / "datasets" / NAME
    assert got.val_files == [files["val0"]] and got.train_files == [files["train0"], files["train1"]]
    assert got.tokenizer == files["model"]
    assert {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in files.items()} == before


def test_manifest_bounds_are_checked(tmp_path):
    official_layout(tmp_path / "data", train_files=3)
    with pytest.raises(DataError, match="only 3 training shards"):
        download_fineweb("sp1024", 4, tmp_path / "data", log=lambda msg: None)
    with pytest.raises(DataError, match="lists no dataset named 'fineweb10B_sp4096'"):
        download_fineweb("sp4096", 1, tmp_path / "data", log=lambda msg: None)
    with pytest.raises(DataError, match="unknown FineWeb variant"):
        dataset_name("gpt2")


def pgolf_offline(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "pgolf_core.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_offline_is_a_clear_error_and_keeps_what_is_there(tmp_path):
    """A truncated shard (an interrupted copy) is not trusted: it must be fetched again, which
    fails offline with exit 2, no traceback, the remote name, and the files on disk untouched."""
    pytest.importorskip("huggingface_hub", reason="pgolf[data] not installed")
    files = official_layout(tmp_path / "data")
    files["train1"].write_bytes(files["train1"].read_bytes()[:-10])
    before = {k: p.read_bytes() for k, p in files.items()}
    proc = pgolf_offline("data", "fineweb", "--train-shards", "2", "--out", str(tmp_path / "data"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"could not download datasets/datasets/{NAME}/fineweb_train_000001.bin" in proc.stderr
    assert "Are you offline?" in proc.stderr and "are kept" in proc.stderr
    assert {k: p.read_bytes() for k, p in files.items()} == before
    assert not list((tmp_path / "data").rglob(".*part-*"))  # no temporary file left behind
