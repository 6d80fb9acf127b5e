"""Download the published FineWeb shards and tokenizers, as the records' `data/cached_challenge_fineweb.py`.

Every variant the records used lives in a Hugging Face dataset of the same layout (`KNOWN_REPOS`; `--repo-id` and
`--remote-root` reach any other): an export root (`datasets/`) with a `manifest.json` that lists each dataset's shard
counts and tokenizer files. The local layout is the records', so paths in recipes and READMEs carry over:

    OUT/manifest.json                                 the repo's manifest (fetched again if it lacks the variant)
    OUT/datasets/fineweb10B_sp1024/fineweb_{val,train}_NNNNNN.bin
    OUT/datasets/fineweb10B_sp1024/manifest.json      ours, written last: the download completed (sha256 of each
    OUT/tokenizers/fineweb_1024_bpe.model             file, the repo and its commit, "verified": false for the split)

Resumable: a file already present is kept when complete (a shard whose size matches its header; any other non-empty
file), so a rerun fetches only what is missing and needs no `huggingface_hub` when nothing is. A download goes
through the hub's cache and is checked there (its sha256 against the hub's ETag, a shard's header against its size)
before it is renamed into place: an interrupted or corrupt copy is never left where a rerun would trust it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf_core.data.build import Log, sha256_file
from pgolf_core.data.check import verify
from pgolf_core.data.tokens import shard_token_count
from pgolf_core.exporter import write_atomic
from pgolf_core.types import DataError

KNOWN_REPOS = {  # variant -> the Hugging Face dataset that publishes it
    **dict.fromkeys(("sp1024", "byte260"), "willdepueoai/parameter-golf"),  # the official export
    **dict.fromkeys(("sp4096", "sp8192"), "kevclark/parameter-golf"),
    "sp8192_lossless_caps_caseops_v1_reserved": "romeerp/parameter-golf-caseops-v1",  # with the byte sidecars
}


@dataclass(frozen=True)
class FinewebData:
    """Where the files are, and how many were fetched now versus found complete."""

    path: Path  # the dataset directory holding the shards
    tokenizer: Path
    val_files: list[Path]
    train_files: list[Path]
    val_bytes_files: list[Path]  # the validation shards' byte sidecars (CaseOps); empty when the repo has none
    downloaded: int
    skipped: int


def dataset_name(variant: str) -> str:
    """sp<VOCAB_SIZE> with an optional _suffix (as the records' downloader accepted), or byte260."""
    if re.fullmatch(r"sp\d+(_\w+)?|byte260", variant):
        return f"fineweb10B_{variant}"
    raise DataError(f"unknown FineWeb variant {variant!r}; expected sp<VOCAB_SIZE>[_SUFFIX] (e.g. sp1024) or byte260")


def _download(repo_id: str, remote: str, dest: Path, revision: str | None) -> tuple[str, str | None]:
    """Fetch `remote` at `revision` (None: the newest) into the hub's cache, check it there, and only then link it
    into place; its sha256 and the commit it came from."""
    try:  # imported only now: files already complete need no huggingface_hub
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as exc:
        raise DataError("downloading FineWeb needs huggingface_hub: pip install 'pgolf[data]'") from exc
    where = f"the Hugging Face dataset {repo_id}"
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, remote, repo_type="dataset", revision=revision))
        revision = meta.commit_hash or revision
        cached = Path(hf_hub_download(repo_id, remote, repo_type="dataset", revision=revision))
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise DataError(f"{remote} not found in {where} ({type(exc).__name__})") from exc
    except Exception as exc:  # network, auth, offline and size errors all end here
        raise DataError(f"could not download {remote} from {where} ({exc!r}); rerun to resume") from exc
    source = cached.resolve(strict=True)  # the snapshot entry is a link to the blob, named by its ETag
    lfs = meta.etag if re.fullmatch("[0-9a-f]{64}", meta.etag or "") else None  # an LFS file's ETag: its sha256
    try:
        digest = verify(source, lfs, dest.suffix == ".bin")
    except DataError as exc:  # dropped from the cache too, or the hub client would hand it back next time
        for path in {cached, source}:
            path.unlink(missing_ok=True)
        raise DataError(f"{remote} from {where} is corrupt ({exc}); removed from the local cache: rerun") from exc
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
    return digest, revision


def _entry(path: Path, key: str, name: str) -> dict[str, Any] | None:
    """The object named `name` in the list `key` of the manifest at `path` (None if none); the one check of its
    shape."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it to refetch") from exc
    entries = manifest.get(key) if isinstance(manifest, dict) else manifest
    if not isinstance(manifest, dict) or not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"{path}: expected a list of objects under {key!r}, got {entries!r:.80}; delete it to refetch")
    return next((e for e in entries if e.get("name") == name), None)


def _count(dataset: dict[str, Any], key: str, path: Path) -> int:
    """A file count of the manifest's stats, checked: it names the files to fetch."""
    value = stats.get(key, 0) if isinstance(stats := dataset.get("stats") or {}, dict) else None
    if type(value) is not int or value < 0:
        raise DataError(f"{path}: datasets[{dataset['name']!r}].stats.{key} = {value!r}, not an integer >= 0")
    return value


def download_fineweb(
    variant: str = "sp1024",
    train_shards: int = 80,
    out_dir: str | Path = "data",
    repo_id: str | None = None,
    remote_root: str = "datasets",
    *,
    log: Log = print,
) -> FinewebData:
    """Fetch the validation shards (with their byte sidecars where the repo's manifest has `val_bytes_glob`), the
    first `train_shards` training shards and the tokenizer of `variant` from `repo_id` (default: the repo that
    publishes the variant), then write our manifest, last. A rerun that finds every file complete keeps the manifest
    already there: it lists the same files, and hashing them again (16 GB for 80 shards) would tell nothing new."""
    name = dataset_name(variant)
    repo_id = repo_id or KNOWN_REPOS.get(variant)
    if repo_id is None:
        raise DataError(f"no known repo has FineWeb {variant!r} (known: {', '.join(KNOWN_REPOS)}); give --repo-id")
    if train_shards < 0:
        raise DataError(f"train_shards must be >= 0, got {train_shards}")
    out, root = Path(out_dir).expanduser(), remote_root.strip("/")
    revision: str | None = None  # pinned by the first download: the files of one run all come from one commit
    sha256: dict[Path, str | None] = {}  # per file: its sha256 if downloaded (checked on the way), None if found

    def get(dest: Path, step: str = "", again: bool = False) -> Path:
        """`dest` (under `out`), downloaded unless already complete (or `again`: the repo's manifest, when the copy
        on disk turns out to be another repo's)."""
        nonlocal revision
        remote = f"{root}/{Path(os.path.relpath(dest, out)).as_posix()}".lstrip("/")
        try:  # complete, so not downloaded again: a shard whose header matches its size, or a non-empty file
            found = not again and (shard_token_count(dest) >= 0 if dest.suffix == ".bin" else dest.stat().st_size > 0)
        except (DataError, OSError):  # missing, or cut short
            found = False
        log(f"data: {step}{remote}: {'already complete' if found else f'downloading from {repo_id}'}")
        sha256[dest], revision = (None, revision) if found else _download(repo_id, remote, dest, revision)
        return dest

    manifest = get(out / "manifest.json")
    dataset = _entry(manifest, "datasets", name)
    if dataset is None and not sha256[manifest]:  # the copy on disk is another repo's: this repo's may list it
        dataset = _entry(get(manifest, again=True), "datasets", name)
    if dataset is None:
        raise DataError(f"{manifest} (from {repo_id}) lists no dataset named {name!r}")
    n_train, n_val = (_count(dataset, key, manifest) for key in ("files_train", "files_val"))
    if train_shards > n_train:
        raise DataError(f"{variant} has only {n_train} training shards on {repo_id}; asked for {train_shards}")
    tokenizer = _entry(manifest, "tokenizers", str(dataset.get("tokenizer_name"))) or {}
    artifacts = [out / str(tokenizer[k]) for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not artifacts:
        raise DataError(f"{manifest}: no tokenizer files listed for {name!r}")
    data, glob = out / "datasets" / name, dataset.get("val_bytes_glob")
    val = [data / f"fineweb_val_{i:06d}.bin" for i in range(n_val)]
    sidecars = [data / str(glob).replace("*", f"{i:06d}") for i in range(n_val)] if glob else []
    train = [data / f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    for i, path in enumerate(plan := val + sidecars + train + artifacts, 1):
        get(path, f"[{i}/{len(plan)}] ")
    record = data / "manifest.json"
    if revision or not record.is_file():  # else it already lists these files, as found: no need to hash them
        files = {}  # named from the record's folder, as `pgolf data check` reads them
        for path in plan:
            kind = "tokenizer" if path in artifacts else "bytes" if path in sidecars else "tokens"
            split = None if path in artifacts else "train" if path in train else "val"
            digest = sha256[path] or sha256_file(path)
            entry = {"sha256": digest, "bytes": path.stat().st_size, "kind": kind, "split": split}
            files[Path(os.path.relpath(path, data)).as_posix()] = entry
        docs = {k: n for k in ("docs_val", "docs_train") if (n := (dataset.get("stats") or {}).get(k)) is not None}
        head = {"schema": "pgolf.download/1", "repo_id": repo_id, "remote_root": root, "variant": variant}
        record_data = {**head, "revision": revision, "files": files, "split": {**docs, "verified": False}}
        write_atomic(record, (json.dumps(record_data, indent=2) + "\n").encode("utf-8"))
    model = next((a for a in artifacts if a.suffix in (".model", ".json")), artifacts[0])
    skipped = list(sha256.values()).count(None)
    return FinewebData(data, model, val, train, sidecars, len(sha256) - skipped, skipped)
