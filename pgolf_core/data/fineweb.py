"""Download the challenge's published FineWeb shards and tokenizer, as `data/cached_challenge_fineweb.py`.

Same source (the Hugging Face dataset `willdepueoai/parameter-golf`, export rooted at `datasets/`),
same manifest-driven file list (all validation shards, the first N training shards, the tokenizer
artifacts of the variant) and the same local layout, so paths in recipes and READMEs carry over:

    OUT/manifest.json
    OUT/datasets/fineweb10B_sp1024/fineweb_{val,train}_NNNNNN.bin
    OUT/tokenizers/fineweb_1024_bpe.model

Resumable: a file already present is kept when complete (a shard whose size matches its header;
any other non-empty file), and each download lands under a temporary name and is renamed into
place, so an interrupted run never leaves a partial file that a later run would trust.
`huggingface_hub` is imported only when something must actually be downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pgolf_core.data.check import Log
from pgolf_core.data.tokens import shard_token_count
from pgolf_core.types import DataError

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"


@dataclass(frozen=True)
class FinewebData:
    """Where the files are, and how many were fetched now versus found complete."""

    path: Path  # the dataset directory holding the shards
    tokenizer: Path
    val_files: list[Path]
    train_files: list[Path]
    downloaded: int
    skipped: int


def dataset_name(variant: str) -> str:
    if variant == "byte260" or (variant.startswith("sp") and variant[2:].isdigit()):
        return f"fineweb10B_{variant}"
    raise DataError(f"unknown FineWeb variant {variant!r}; expected sp<VOCAB_SIZE> (e.g. sp1024) or byte260")


def is_complete(path: Path) -> bool:
    """True when `path` need not be downloaded again."""
    if path.suffix == ".bin":
        try:
            shard_token_count(path)
            return True
        except DataError:
            return False
    return path.is_file() and path.stat().st_size > 0


class _Fetcher:
    """Maps remote paths (`datasets/...`) to local ones under `out_dir` and fetches missing ones."""

    def __init__(self, out_dir: Path, log: Log):
        self.out_dir, self.log = out_dir, log
        self.downloaded = self.skipped = 0

    def local(self, remote: str) -> Path:
        """`datasets/<rest>` on the hub is `out_dir/<rest>` here: the export root is `out_dir`."""
        return self.out_dir.joinpath(*PurePosixPath(remote).parts[1:])

    def get(self, remote: str) -> Path:
        dest = self.local(remote)
        if is_complete(dest):
            self.skipped += 1
            return dest
        try:  # imported only now: files already complete need no huggingface_hub
            from huggingface_hub import hf_hub_download
        except ImportError as exc:
            raise DataError("downloading FineWeb needs huggingface_hub: pip install 'pgolf[data]'") from exc
        self.log(f"data: downloading {remote} from {REPO_ID}")
        folder, _, filename = remote.rpartition("/")
        try:
            cached = hf_hub_download(repo_id=REPO_ID, filename=filename, repo_type="dataset", subfolder=folder or None)
        except Exception as exc:  # network, auth and offline errors all end here
            raise DataError(
                f"could not download {remote} from the Hugging Face dataset {REPO_ID} ({type(exc).__name__}: "
                f"{exc}). Are you offline? Files already in {self.out_dir} are kept; rerun when connected to resume."
            ) from exc
        source = Path(cached).resolve(strict=True)  # the HF cache may hand back a snapshot symlink
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
        try:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        if dest.suffix == ".bin":
            shard_token_count(dest)
        self.downloaded += 1
        return dest


def _entry(manifest: Any, key: str, name: str, path: Path) -> dict[str, Any]:
    """The object named `name` in the manifest's list `key`. One check of the manifest's shape: for a manifest
    that is not a JSON object, the message's "got" shows the manifest itself."""
    entries = manifest.get(key, []) if isinstance(manifest, dict) else manifest
    if not isinstance(manifest, dict) or not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(
            f"{path}: expected a JSON object with a list of objects under {key!r}, got {entries!r:.80}; delete it "
            "to download it again"
        )
    entry = next((e for e in entries if e.get("name") == name), None)
    if entry is None:
        raise DataError(f"{path} lists no {key[:-1]} named {name!r}")
    return entry


def _count(dataset: dict[str, Any], key: str, path: Path) -> int:
    stats = dataset.get("stats") or {}
    value = stats.get(key, 0) if isinstance(stats, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(
            f"{path}: datasets[{dataset.get('name')!r}].stats.{key} = {value!r}; expected an integer >= 0 "
            "(a non-object 'stats' reads as None); delete the file to download it again"
        )
    return value


def download_fineweb(
    variant: str = "sp1024", train_shards: int = 80, out_dir: str | Path = "data", *, log: Log = print
) -> FinewebData:
    """Fetch the validation split, the first `train_shards` training shards and the tokenizer of `variant`."""
    name = dataset_name(variant)
    if train_shards < 0:
        raise DataError(f"train_shards must be >= 0, got {train_shards}")
    fetch = _Fetcher(Path(out_dir).expanduser(), log)
    manifest_path = fetch.get(f"{REMOTE_ROOT}/manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{manifest_path} is not valid JSON ({exc}); delete it to download it again") from exc
    dataset = _entry(manifest, "datasets", name, manifest_path)
    n_train, n_val = (_count(dataset, key, manifest_path) for key in ("files_train", "files_val"))
    if train_shards > n_train:
        raise DataError(f"{variant} has only {n_train} training shards on {REPO_ID}; asked for {train_shards}")
    tokenizer = _entry(manifest, "tokenizers", str(dataset.get("tokenizer_name")), manifest_path)
    artifacts = [str(tokenizer[k]) for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not artifacts:
        raise DataError(f"{manifest_path}: tokenizer {tokenizer.get('name')!r} lists no files to download")
    prefix = f"{REMOTE_ROOT}/datasets/{name}"
    val = [fetch.get(f"{prefix}/fineweb_val_{i:06d}.bin") for i in range(n_val)]
    train = [fetch.get(f"{prefix}/fineweb_train_{i:06d}.bin") for i in range(train_shards)]
    tok_files = [fetch.get(f"{REMOTE_ROOT}/{a}") for a in artifacts]
    model = next((p for p in tok_files if p.suffix in (".model", ".json")), tok_files[0])
    return FinewebData(fetch.local(prefix), model, val, train, fetch.downloaded, fetch.skipped)
