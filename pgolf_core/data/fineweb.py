"""Download the published FineWeb shards and tokenizers, as the records' `data/cached_challenge_fineweb.py`.

Every variant the records used lives in a Hugging Face dataset of the same layout (`KNOWN_REPOS`; `--repo-id` and
`--remote-root` reach any other): an export root (`datasets/`) with a `manifest.json` that lists each dataset's shard
counts and tokenizer files. The local layout is the records', so paths in recipes and READMEs carry over:

    OUT/manifest.json                                 the repo's manifest (fetched again if it lacks the variant)
    OUT/datasets/fineweb10B_sp1024/fineweb_{val,train}_NNNNNN.bin
    OUT/datasets/fineweb10B_sp1024/manifest.json      ours, written last: the download completed (each file's
    OUT/tokenizers/fineweb_1024_bpe.model             sha256, kind and split, the repo and its commit)

Resumable: a file already present is kept when complete (a shard whose size matches its header; any other non-empty
file), so a rerun fetches only what is missing and needs no `huggingface_hub` when nothing is. A download goes
through the hub's cache and is checked there (its sha256 against the hub's ETag, a shard's header against its size)
before it is renamed into place: an interrupted or corrupt copy is never left where a rerun would trust it.
Our manifest proves no split: the published sets hold no document fingerprints, so `pgolf run` warns on them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pgolf_core.data.build import BuiltDataset
from pgolf_core.data.check import Log, read_manifest, sha256_file, verify
from pgolf_core.data.tokens import shard_token_count
from pgolf_core.exporter import write_atomic
from pgolf_core.types import DataError

KNOWN_REPOS = {  # variant -> the Hugging Face dataset that publishes it
    "sp1024": "willdepueoai/parameter-golf",  # the official export (its byte260 has no SentencePiece model)
    **dict.fromkeys(("sp4096", "sp8192"), "kevclark/parameter-golf"),
    "sp8192_lossless_caps_caseops_v1_reserved": "romeerp/parameter-golf-caseops-v1",  # with the byte sidecars
}


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
    dest.unlink(missing_ok=True)  # a copy cut short, or another repo's manifest
    try:
        os.link(source, dest)  # at once: the whole file or none
    except OSError:  # another file system: a copy beside it, renamed into place when complete
        shutil.copyfile(source, tmp := dest.with_name(f".{dest.name}.part-{os.getpid()}"))
        os.replace(tmp, dest)
    return digest, revision


def _entry(path: Path, key: str, name: str) -> dict[str, Any] | None:
    """The object named `name` in the list `key` of the hub's manifest at `path` (None if none); the one check of
    its shape."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it to fetch it again") from exc
    entries = manifest.get(key) if isinstance(manifest, dict) else manifest
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"{path}: expected a list of objects under {key!r}, got {entries!r:.80}; delete it to refetch")
    return next((e for e in entries if e.get("name") == name), None)


def download_fineweb(
    variant: str = "sp1024",
    train_shards: int = 80,
    out_dir: str | Path = "data",
    repo_id: str | None = None,
    remote_root: str = "datasets",
    *,
    log: Log = print,
) -> BuiltDataset:
    """Fetch the validation shards (with their byte sidecars where the repo's manifest has `val_bytes_glob`), the
    first `train_shards` training shards and the tokenizer of `variant` from `repo_id` (default: the repo that
    publishes the variant), then write our manifest, last. A file found complete keeps the sha256 our manifest
    already holds for it at its size: hashing 16 GB of shards again on every rerun would tell nothing new."""
    name = f"fineweb10B_{variant}"  # a name the repo's manifest does not list is refused below
    if (repo_id := repo_id or KNOWN_REPOS.get(variant)) is None:
        raise DataError(f"no known repo has FineWeb {variant!r} (known: {', '.join(KNOWN_REPOS)}); give --repo-id")
    out, root = Path(out_dir).expanduser(), remote_root.strip("/")
    earlier = read_manifest(data := out / "datasets" / name) or {}  # our record of an earlier run, if any
    same = [earlier.get("repo_id"), earlier.get("remote_root")] == [repo_id, root]  # what it holds carries over
    revision: str | None = earlier.get("revision") if same else None  # else pinned by the first download now
    fetched: dict[Path, str] = {}  # the sha256 of each file downloaded now (checked on the way)

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
        if not found:
            fetched[dest], revision = _download(repo_id, remote, dest, revision)
        return dest

    manifest = get(out / "manifest.json")
    if (dataset := _entry(manifest, "datasets", name)) is None and manifest not in fetched:
        dataset = _entry(get(manifest, again=True), "datasets", name)  # the copy on disk is another repo's
    if dataset is None:
        raise DataError(f"{manifest} (from {repo_id}) lists no dataset named {name!r}")
    hub: dict[str, Any] = dataset["stats"] if isinstance(dataset.get("stats"), dict) else {"files_train": None}
    n_train, n_val = counts = [hub.get(k, 0) for k in ("files_train", "files_val")]  # they name the files to fetch
    if not all(type(n) is int and n >= 0 for n in counts):
        raise DataError(f"{manifest}: {name}: files_train = {n_train!r}, files_val = {n_val!r}; expected ints >= 0")
    if not 0 <= train_shards <= n_train:
        raise DataError(f"{variant} has {n_train} training shards on {repo_id}; asked for {train_shards}")
    tokenizer = _entry(manifest, "tokenizers", str(dataset.get("tokenizer_name"))) or {}
    artifacts = [out / str(tokenizer[k]) for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not artifacts:
        raise DataError(f"{manifest}: no tokenizer files listed for {name!r}")
    glob = dataset.get("val_bytes_glob")
    val = [data / f"fineweb_val_{i:06d}.bin" for i in range(n_val)]
    sidecars = [data / str(glob).replace("*", f"{i:06d}") for i in range(n_val)] if glob else []
    train = [data / f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    for i, path in enumerate(plan := val + sidecars + train + artifacts, 1):
        get(path, f"[{i}/{len(plan)}] ")
    known = earlier.get("files", {}) if same else {}
    stats, files = dict(tokens_train=0, tokens_val=0), dict[str, dict[str, Any]]()
    for path in plan:  # named from the dataset's folder, as `pgolf data check` reads them
        entry = known.get(key := Path(os.path.relpath(path, data)).as_posix(), {})
        size = path.stat().st_size
        digest = fetched.get(path) or (entry.get("bytes") == size and entry.get("sha256")) or sha256_file(path)
        split = None if path in artifacts else "train" if path in train else "val"
        files[key] = {"sha256": digest, "bytes": size, "kind": "tokenizer", "split": split}
        if path.suffix == ".bin":
            files[key] |= {"kind": "bytes" if path in sidecars else "tokens", "tokens": shard_token_count(path)}
            stats[f"tokens_{split}"] += files[key]["tokens"] * (path not in sidecars)
    stats |= {"files_train": len(train), "files_val": len(val)}
    model = next((a for a in artifacts if a.suffix == ".model"), artifacts[0])
    vocab = {"file": Path(os.path.relpath(model, data)).as_posix(), "vocab_size": tokenizer.get("vocab_size")}
    record: dict[str, Any] = {"schema": "pgolf.download/1", "repo_id": repo_id, "remote_root": root, "variant": variant}
    record |= {"revision": revision, "tokenizer": vocab, "stats": stats, "hub_stats": hub, "files": files}
    write_atomic(data / "manifest.json", (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    log(f"data: {len(fetched)} files downloaded, {len(plan) + 1 - len(fetched)} already complete")
    return BuiltDataset(data, model, record)
