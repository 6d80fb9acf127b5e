"""Is this data what it claims to be? `pgolf data check PATH`, what a reviewer of a submission runs on its data, and
the guard `pgolf run` applies before it trains on a directory.

A document is identified by the fingerprint of its tokens (`fingerprint`: BLAKE2b-128 of the uint16 ids after its
BOS), so a validation document that reappears in training is found whatever the shard layout; a side's fingerprint
is the SHA-256 of its documents' fingerprints in order. `pgolf data build` records both sides' document ranges and
fingerprints in `manifest.json`; the check recomputes them from the shards, and the run refuses a manifest whose
sides overlap or that does not list the files it reads (a file added or renamed since, or whose token count changed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from pgolf_core.data import caseops
from pgolf_core.data.tokens import (
    build_byte_tables,
    check_shards,
    document_starts,
    load_byte_sidecar,
    load_tokenizer,
    read_shard,
    shard_files,
    shard_token_count,
)
from pgolf_core.types import DataConfig, DataError

Log = Callable[[str], None]
PATTERNS = {"val": DataConfig.val_pattern, "train": DataConfig.train_pattern, "bytes": "fineweb_val_bytes_*.bin"}


def fingerprint(ids: Iterable[int] | np.ndarray) -> bytes:
    """The fingerprint of one document: its token ids after BOS, as little-endian uint16."""
    return hashlib.blake2b(np.asarray(ids, dtype="<u2").tobytes(), digest_size=16).digest()


def side_fingerprint(digests: Sequence[bytes]) -> str:
    return hashlib.sha256(b"".join(digests)).hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verify(path: Path, sha256: str | None = None, shard: bool = False) -> str:
    """`path`'s SHA-256, refused unless it is `sha256` (when given) and, for a `shard`, its header matches its size:
    how the audit checks the files a manifest lists."""
    digest = sha256_file(path)
    if sha256 and digest != sha256:
        raise DataError(f"sha256 {digest}, expected {sha256}")
    if shard:
        shard_token_count(path)
    return digest


def split_record(val: Sequence[bytes], train: Sequence[bytes], n_docs: int) -> dict[str, Any]:
    """The manifest's proof of a split made by construction (what `guard` reads): validation the first `len(val)`
    of `n_docs` documents, training the rest less the copies of a validation document left out."""
    return {
        "val": {"docs": [0, len(val)], "sha256": side_fingerprint(val)},
        "train": {"docs": [len(val), n_docs], "sha256": side_fingerprint(train)},
        "copies_left_out": n_docs - len(val) - len(train),
        "shared_docs": len(set(val) & set(train)),
    }


def documents(files: Sequence[Path], bos_id: int) -> tuple[list[bytes], list[int], int]:
    """Fingerprints and token counts of the documents of the stream `files` (one shard in memory at a time; a
    document may straddle shards), and how many tokens came before the first BOS (0 in good data)."""
    digests: list[bytes] = []
    lengths: list[int] = []
    open_doc: list[np.ndarray] | None = None  # the tokens of the document being read, None before the first BOS

    def close() -> None:
        if open_doc is not None:
            digests.append(fingerprint(ids := np.concatenate(open_doc)))
            lengths.append(ids.size)

    lead = 0
    for path in files:
        tokens = read_shard(path)
        bounds = [*document_starts(tokens, bos_id).nonzero().flatten().tolist(), tokens.numel()]
        head = tokens[: bounds[0]].numpy()
        if open_doc is None:
            lead += head.size
        else:
            open_doc.append(head)
        for start, end in zip(bounds, bounds[1:], strict=False):
            close()
            open_doc = [tokens[start + 1 : end].numpy()]
    close()
    return digests, lengths, lead


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from exc
    files = manifest.get("files", {}) if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise DataError(f"{path}: expected a JSON object whose 'files' maps names to objects (tokens, kind, sha256)")
    split = manifest.get("split") or {}
    sides = [split.get(side) for side in ("val", "train")] if isinstance(split, dict) else [None]
    if split and not all(isinstance(s, dict) and is_range(s.get("docs")) for s in sides):
        raise DataError(f"{path}: expected 'split' with 'val' and 'train' objects whose 'docs' are document ranges "
                        f"[first, end) with 0 <= first <= end, got {split!r:.160}")  # fmt: skip
    return manifest


def is_range(docs: Any) -> bool:
    return isinstance(docs, list) and len(docs) == 2 and all(type(i) is int for i in docs) and 0 <= docs[0] <= docs[1]


def is_caseops(sp: spm.SentencePieceProcessor) -> bool:
    """A CaseOps tokenizer has the markers as pieces: its byte tables count 3 bytes of no text for each."""
    return any(sp.piece_to_id(c) != sp.unk_id() for c in caseops.RESERVED)


def guard(root: Path, shards: list[Path], sidecars: list[Path], tokenizer: Path, log: Log) -> None:
    """Before a run reads `shards` (tokens) and `sidecars` (bytes) from `root`: refuse a CaseOps tokenizer without
    byte sidecars and a manifest whose split overlaps or that does not list those files as they are; warn when no
    manifest proves the split disjoint."""
    if not sidecars and is_caseops(load_tokenizer(tokenizer)):
        raise DataError(
            f"tokenizer {tokenizer} is a CaseOps tokenizer (its byte tables count the markers): set "
            "[data] val_bytes_pattern to its byte sidecars"
        )
    manifest = read_manifest(root) or {}
    if not (split := manifest.get("split")):
        log(f"warning: nothing proves the validation documents of {root} are not in training (no manifest with a "
            f"fingerprinted split); run `pgolf data check {root}`")  # fmt: skip
        return
    val, train = split["val"]["docs"], split["train"]["docs"]
    if split.get("shared_docs") or max(val[0], train[0]) < min(val[1], train[1]):
        raise DataError(
            f"{root / 'manifest.json'}: the validation documents {val} and the training documents {train} overlap "
            f"({split.get('shared_docs', 0)} shared): training on them would score on seen text; rebuild the data "
            "with `pgolf data build` (disjoint by construction)"
        )
    listed = manifest.get("files", {})
    for path, kind in {**dict.fromkeys(shards, "tokens"), **dict.fromkeys(sidecars, "bytes")}.items():
        entry = listed.get(path.name) or {}
        if entry.get("kind", "tokens") != kind or entry.get("tokens") != shard_token_count(path):
            raise DataError(
                f"{path} is not in {root / 'manifest.json'} as a {kind} file of {shard_token_count(path)} tokens "
                f"(it lists {entry or 'nothing'} under that name): the manifest's split does not cover it"
            )


def audit(root: Path, tokenizer: Path | None, log: Log) -> list[str]:
    """Check the data directory `root`; log a report and return the problems found (empty: all good)."""
    problems: list[str] = []

    def report(ok: bool, text: str) -> None:
        log(f"{'ok     ' if ok else 'PROBLEM'} {text}")
        problems.extend([] if ok else [text])

    manifest = read_manifest(root)
    sides = {}
    for side in ("val", "train"):
        try:
            sides[side] = shard_files(root, PATTERNS[side])
        except DataError as exc:
            report(False, str(exc))
    try:
        sidecars = shard_files(root, PATTERNS["bytes"], sidecars=True)
    except DataError:
        sidecars = []
    if manifest is None:
        report(False, f"no manifest.json in {root}: nothing records which files belong together or the split")
    else:
        listed = manifest.get("files", {})
        on_disk = {p.name for p in root.glob("*.bin")}
        report(not (extra := sorted(on_disk - set(listed))), f"every shard is in manifest.json (not listed: {extra})")
        for name, entry in sorted(listed.items()):
            try:
                report(True, f"{name}: sha256 {verify(root / name, entry.get('sha256'), name.endswith('.bin'))[:16]}")
            except (DataError, OSError) as exc:
                report(False, f"{name}: {exc}")
    official = sorted((root.parent.parent / "tokenizers").glob("*.model"))  # the download layout: one tokenizer
    listed = str(((manifest or {}).get("tokenizer") or {}).get("file", "tokenizer.model"))  # a build's or a download's
    names = [tokenizer] if tokenizer else [root / listed, *(official if len(official) == 1 else [])]
    if not (found := [n for n in names if n.is_file()]):
        report(False, "no tokenizer found (give --tokenizer MODEL): the vocabulary and the bytes are not checked")
        return problems
    sp = load_tokenizer(found[0])
    bos, vocab = sp.bos_id(), int(sp.vocab_size())
    log(f"tokenizer {found[0]} ({vocab} pieces, BOS {bos}{', CaseOps' if is_caseops(sp) else ''})")
    for side, files in list(sides.items()):  # a side that fails here (ids, headers) is not read further
        try:
            report(True, f"{side}: {check_shards(files, vocab):,} tokens in {len(files)} shards, every id < {vocab}")
        except DataError as exc:
            report(False, str(exc))
            del sides[side]
    fingerprints = {}
    for side, files in sides.items():
        digests, lengths, lead = documents(files, bos)
        fingerprints[side] = digests
        report(lead == 0, f"{side}: the stream starts with BOS ({lead} tokens before the first)")
        mean, longest = np.mean(lengths or [0]), max(lengths or [0])
        stats = f"{len(lengths):,} documents, {mean:.1f} tokens on average, max {longest}"
        report(len(lengths) > 0 and 0 not in lengths, f"{side}: {stats}, {lengths.count(0)} empty")
    if len(fingerprints) == 2:
        shared = set(fingerprints["val"]) & set(fingerprints["train"])
        report(not shared, f"train/val overlap: {len(shared)} validation documents also in training (fingerprints)")
    split = (manifest or {}).get("split") or {}
    for side, digests in fingerprints.items():
        if isinstance(split.get(side), dict) and "sha256" in split[side]:
            mine, listed_sha = side_fingerprint(digests), str(split[side]["sha256"])
            report(mine == listed_sha, f"{side}: fingerprint {mine[:16]} (manifest: {listed_sha[:16]})")
    if "val" in sides:
        val = torch.cat([read_shard(f) for f in sides["val"]]).to(torch.int64)
        positions = torch.arange(1, val.numel())
        if sidecars:
            try:
                side_bytes = load_byte_sidecar(sidecars, sides["val"], val, bos).target_bytes(val, val, positions)
                report(True, f"byte sidecar: {int(side_bytes.sum()):,} bytes, one per validation token, 0 at BOS")
            except DataError as exc:
                report(False, str(exc))
        table = build_byte_tables(sp, vocab).target_bytes(val[:-1], val[1:], positions)
        log(f"        validation bytes by the tokenizer's table: {int(table.to(torch.int64).sum()):,}")
        if is_caseops(sp) and not sidecars:
            report(False, "a CaseOps tokenizer without a byte sidecar: its table counts the markers, not the text")
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    root = Path(args.path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a directory (expected a folder of fineweb_*.bin shards)")
    if (tokenizer := Path(args.tokenizer).expanduser() if args.tokenizer else None) is not None:
        load_tokenizer(tokenizer)  # a tokenizer named but missing or broken: bad input (exit 2), not a finding
    problems = audit(root, tokenizer, print)
    print(f"{len(problems)} problem(s) in {root}" if problems else f"{root}: no problems found")
    return 1 if problems else 0


# `pgolf data check`: help, handler, then each option as (flag, add_argument keywords); cli.py registers it.
COMMAND = ("audit a data directory: shards, sidecar, BOS, train/val overlap, bytes", cmd_check, (
    ("path", dict(metavar="PATH", help="the folder of the fineweb_*.bin shards")),
    ("--tokenizer", dict(metavar="MODEL", help="SentencePiece .model (default: the one beside the shards)")),
))  # fmt: skip
