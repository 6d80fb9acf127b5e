"""Turn your own text into challenge-format data: a SentencePiece BPE tokenizer trained with the
official sp1024 settings at any vocab size (or one you give), `fineweb_{val,train}_NNNNNN.bin` shards
and a manifest; optionally through the CaseOps transform, with the validation byte sidecar.

Input files:
* `.txt`: documents are separated by blank lines (a line holding only whitespace). Paragraph-sized
  documents give the validation split enough documents to draw from even when you have one file;
  put a multi-paragraph document in a `.jsonl` line to keep it whole.
* `.jsonl`: one JSON object per line with a string field "text" (the FineWeb `docs_selected.jsonl`
  layout). Blank lines are ignored.
Documents that are empty after stripping whitespace are dropped.

Layout, as the official export: each document becomes `[BOS=1] + ids` (no EOS); the first `val_docs`
documents (the final records: 50,000) are the validation split, the rest train; each split is one
stream cut into shards of `shard_tokens`. The split cannot leak: training starts after the last
validation document and leaves out any exact copy of one (fingerprints of their tokens), and the
manifest records both sides' document ranges and fingerprints, which `pgolf run` and `pgolf data check`
read. A given tokenizer (`--tokenizer`) must have BOS = 1, as the challenge's. With CaseOps (`caseops.py`)
every document is transformed before tokenizing, and each validation shard gets a `fineweb_val_bytes_NNNNNN.bin`
sidecar: per token, the UTF-8 bytes of the original text it stands for (what BPB divides by). Two deliberate
differences from the official exporter, for a small local corpus: a trained tokenizer sees the
training documents only, less copies of validation documents (so validation text is truly unseen),
and long documents are fed to the trainer in chunks of at most 4,000 bytes, because SentencePiece
silently skips any training sentence over 4,192 bytes. The whole dataset is built in a
temporary directory and renamed into place, so an interrupted build never leaves a directory that
looks complete. Text is held in memory while building.

The embedded sample (`ensure_sample_data`: train and score a model with no download and no network) is built here
too: `sample_text.jsonl.zst` (1.8 MB of CPython's own documentation, PSF license; see SAMPLE_TEXT_LICENSE.txt and
tools/make_sample_text.py) turned once into a 1024-token tokenizer and shards, then cached. The cache directory is
named by a hash of everything that determines its bytes (text, settings, sentencepiece version), so a changed recipe
never reuses stale data, and it is published with the same atomic rename.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import zstandard

from pgolf_core.data import caseops as caseops_text
from pgolf_core.data.check import Log, fingerprint, is_caseops, read_manifest, sha256_file, split_record
from pgolf_core.data.tokens import HEADER_BYTES, load_tokenizer, write_shard
from pgolf_core.types import DataError

# The official sp1024 trainer settings (data/download_hf_docs_and_tokenize.py), with byte_fallback as
# in the shipped model (false). vocab_size is the caller's.
TRAINER_SETTINGS: dict[str, Any] = dict(
    model_type="bpe", character_coverage=0.999, byte_fallback=False, split_digits=True,
    normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
    hard_vocab_limit=False,
    # Bit-identical tokenizers run to run: one thread, every sentence, no sampling or shuffling.
    num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
)  # fmt: skip
BOS_ID = 1
TRAIN_CHUNK_BYTES = 4000
SHARD_TOKENS = 10**8
BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
SAMPLE_TEXT = Path(__file__).with_name("sample_text.jsonl.zst")
SAMPLE_VOCAB = 1024
SAMPLE_VAL = 0.1
SAMPLE_SHARD = 2**18  # several train shards, so the sample exercises shard crossing and wrap-around
SAMPLE_VERSION = 4  # bump when the build procedure changes in a way the settings below do not capture


@dataclass(frozen=True)
class BuiltDataset:
    """A finished dataset directory: shards, `tokenizer.model` and `manifest.json`."""

    path: Path
    tokenizer: Path
    manifest: dict[str, Any] = field(repr=False)  # its "stats" hold the token counts


def read_documents(path: str | Path) -> list[str]:
    """Documents of one `.txt` or `.jsonl` file (rules in the module docstring)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file {path} is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if path.suffix == ".txt":
        docs = BLANK_LINES.split(text.replace("\r\n", "\n"))
    elif path.suffix == ".jsonl":
        docs = [_jsonl_text(path, n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    else:
        raise DataError(f"text file {path}: expected a .txt or .jsonl file, got {path.suffix or 'no suffix'!r}")
    return [d.strip() for d in docs if d.strip()]


def _jsonl_text(path: Path, lineno: int, line: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f'{path}:{lineno}: invalid JSON ({exc.msg}); expected {{"text": ...}}') from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise DataError(f'{path}:{lineno}: expected a JSON object with a string field "text"')
    return obj["text"]


def training_sentences(docs: Iterable[str], limit: int = TRAIN_CHUNK_BYTES) -> Iterable[str]:
    """Documents as trainer sentences of at most `limit` bytes: whole lines packed greedily, and a
    line longer than `limit` cut at spaces (only a single word longer than `limit` can exceed it)."""
    for doc in docs:
        chunks: list[list[str]] = [[]]  # the units of each chunk; the last one is being filled
        size = 0  # bytes in the last chunk
        for line in doc.replace("\x00", " ").strip().splitlines(keepends=True):  # \x00 as the official input
            for unit in [line] if len(line.encode()) <= limit else re.split(r"(?<= )", line):
                n = len(unit.encode())
                if chunks[-1] and size + n > limit:
                    chunks.append([])
                    size = 0
                chunks[-1].append(unit)
                size += n
        yield from filter(None, ("".join(chunk).strip() for chunk in chunks))


def train_tokenizer(docs: Sequence[str], vocab_size: int, caseops: bool = False, log: Log = print) -> bytes:
    """A serialized SentencePiece model trained on `docs` with the official settings; with `caseops`, the four
    CaseOps markers are its first pieces after the controls (user-defined symbols: never split or merged)."""
    if not 4 < vocab_size <= 2**16:
        raise DataError(f"vocab_size must be in 5..65536 (shards store uint16 ids), got {vocab_size}")
    model = io.BytesIO()
    log(f"data: training a {vocab_size}-token BPE tokenizer on {len(docs)} documents")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(training_sentences(docs)),
            model_writer=model,
            vocab_size=vocab_size,
            minloglevel=2,
            user_defined_symbols=list(caseops_text.RESERVED if caseops else ()),
            **TRAINER_SETTINGS,
        )
    except RuntimeError as exc:
        raise DataError(f"SentencePiece could not train a {vocab_size}-token vocabulary on this text: {exc}") from exc
    return model.getvalue()


def write_split(
    out_dir: Path, split: str, docs: Sequence[str], sp: spm.SentencePieceProcessor, shard_tokens: int, **how: Any
) -> tuple[dict[str, dict], list[bytes]]:
    """Encode one split's documents into consecutive shards (a document may straddle two); with `sidecar=True`, the
    per-token byte sidecar beside them (the original text's UTF-8 bytes of each token's surface, 0 for BOS). A
    document whose fingerprint is in `skip` (a copy of a validation document) is left out.

    Encodes in batches and fills one shard buffer at a time, so memory stays at one shard.
    Returns ({file name: {"tokens", "sha256", "kind", "split"}}, each written document's fingerprint).
    """
    files: dict[str, dict] = {}
    kinds = ("tokens", "bytes") if how.get("sidecar") else ("tokens",)
    buf, fill, written = np.empty((len(kinds), shard_tokens), dtype=np.uint16), 0, []

    def flush() -> None:
        index = sum(f["kind"] == "tokens" for f in files.values())
        for row, kind in zip(buf, kinds, strict=True):
            path = write_shard(out_dir / f"fineweb_{split}_{'bytes_' * (kind == 'bytes')}{index:06d}.bin", row[:fill])
            files[path.name] = {"tokens": fill, "sha256": sha256_file(path), "kind": kind, "split": split}

    for start in range(0, len(docs), 256):
        for doc in encode(sp, docs[start : start + 256], bool(how.get("sidecar"))):
            if (digest := fingerprint(doc[0])) in how.get("skip", ()):
                continue
            written.append(digest)
            rows = np.asarray([[first, *ids] for first, ids in zip((BOS_ID, 0), doc, strict=False)], dtype=np.uint16)
            while rows.shape[1]:
                k = min(shard_tokens - fill, rows.shape[1])
                buf[:, fill : fill + k], rows = rows[:, :k], rows[:, k:]
                fill += k
                if fill == shard_tokens:
                    flush()
                    fill = 0
    if fill:
        flush()
    return files, written


def encode(sp: spm.SentencePieceProcessor, docs: Sequence[str], sidecar: bool) -> list[tuple[list[int], ...]]:
    """Each document's token ids and, with `sidecar`, the original bytes of each token: the pieces' surfaces (the
    input text each piece covers, before normalization) decoded by CaseOps (`original_bytes`); needs protobuf."""
    if not sidecar:
        return [(ids,) for ids in sp.encode(list(docs))]
    protos = sp.encode(list(docs), out_type="proto")  # needs protobuf: checked before the build starts
    return [([q.id for q in p.pieces], caseops_text.original_bytes(q.surface for q in p.pieces)) for p in protos]


def export_dataset(
    docs: Sequence[str],
    tokenizer: int | bytes,
    out_dir: Path,
    *,
    val_docs: int,
    shard_tokens: int,
    source: dict[str, Any],
    log: Log,
    caseops: bool = False,
) -> BuiltDataset:
    """Tokenizer (trained to `tokenizer` pieces, or a serialized model) + shards + manifest for `docs` into
    `out_dir` (created atomically; must not exist). The split is by document and disjoint by construction: the
    first `val_docs` documents are validation, training starts after them and leaves out exact copies of a
    validation document; the manifest records each side's document range and fingerprint (`check.fingerprint`)."""
    if not 0 < val_docs < len(docs):
        raise DataError(f"validation takes {val_docs} of {len(docs)} non-empty documents: each side needs at least one")
    if shard_tokens <= 0:
        raise DataError(f"shard_tokens must be positive, got {shard_tokens}")
    try:  # before a tokenizer is trained: sentencepiece >= 0.2.1 reads the pieces' surfaces through protobuf
        if caseops:
            import google.protobuf  # noqa: F401
    except ImportError as exc:
        raise DataError(f"the CaseOps byte sidecar needs protobuf: pip install 'pgolf[data]' ({exc})") from exc
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # where the temporary build directory goes
    docs = [caseops_text.encode(doc) for doc in docs] if caseops else docs
    val_text = set(docs[:val_docs])  # a trained tokenizer sees no validation document, nor a copy of one
    unseen = [doc for doc in docs[val_docs:] if doc not in val_text]
    model = train_tokenizer(unseen, tokenizer, caseops, log) if isinstance(tokenizer, int) else tokenizer
    sp = spm.SentencePieceProcessor(model_proto=model)
    if caseops != is_caseops(sp):  # the markers as pieces: a CaseOps tokenizer
        raise DataError(f"the tokenizer {'lacks' if caseops else 'has'} the CaseOps markers (--caseops goes with them)")
    if isinstance(tokenizer, int) and sp.vocab_size() != tokenizer:
        log(f"data: the text supports only {sp.vocab_size()} tokens, not {tokenizer} (hard_vocab_limit=false)")
    with tempfile.TemporaryDirectory(
        prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent, ignore_cleanup_errors=True
    ) as name:  # removed on the way out, unless published (renamed into place) by then
        tmp = Path(name)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make a shared data directory private
        (tmp / "tokenizer.model").write_bytes(model)
        log(f"data: writing shards ({val_docs} validation, {len(docs) - val_docs} training documents)")
        val_files, val_digests = write_split(tmp, "val", docs[:val_docs], sp, shard_tokens, sidecar=caseops)
        train_files, kept = write_split(tmp, "train", docs[val_docs:], sp, shard_tokens, skip=set(val_digests))
        if dropped := len(docs) - val_docs - len(kept):
            log(f"data: left {dropped} training documents out: copies of validation documents")
        counts = dict(docs_total=len(docs), docs_val=val_docs, docs_train=len(kept))
        for side, files in (("val", val_files), ("train", train_files)):
            shards = [f for f in files.values() if f["kind"] == "tokens"]
            counts |= {f"tokens_{side}": sum(f["tokens"] for f in shards), f"files_{side}": len(shards)}
        # Everything that identifies the data, and nothing machine-specific (no paths, no times).
        manifest = {
            "schema": "pgolf.dataset/2", "source": source, "caseops": caseops,
            "tokenizer": {"file": "tokenizer.model", "sha256": hashlib.sha256(model).hexdigest(),
                          "vocab_size": sp.vocab_size(), "sentencepiece": spm.__version__,
                          "trainer": TRAINER_SETTINGS if isinstance(tokenizer, int) else None},
            "bos_id": 1, "append_eos": False, "shard_tokens": shard_tokens, "stats": counts,
            "split": split_record(val_digests, kept, len(docs)),
            "files": {**val_files, **train_files},
        }  # fmt: skip
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        # Publish: one atomic rename, which replaces only an empty directory. A concurrent builder that already
        # published `out_dir` wins: its copy is kept and ours removed with the temporary directory (same bytes).
        try:
            os.rename(tmp, out_dir)
        except OSError as exc:
            if not (out_dir / "manifest.json").is_file():
                raise DataError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    return BuiltDataset(out_dir, out_dir / "tokenizer.model", manifest)


def build_dataset(
    text_files: Sequence[str | Path],
    tokenizer: int | str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    val_docs: int | None = None,
    log: Log = print,
    shard_tokens: int = SHARD_TOKENS,
    caseops: bool = False,
) -> BuiltDataset:
    """Build a dataset from `.txt`/`.jsonl` files into `out_dir` (which must be absent or empty), with a tokenizer
    trained to `tokenizer` pieces or read from that `.model` file; validation is the first `val_docs` documents,
    else the leading `val_fraction` of them (at least one)."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"output directory {out_dir} already exists and is not empty; choose a new one")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not isinstance(tokenizer, int) and (sp := load_tokenizer(tokenizer)).bos_id() != BOS_ID:
        raise DataError(f"tokenizer {tokenizer}: BOS is id {sp.bos_id()}; the challenge's shards need BOS = {BOS_ID}")
    model = tokenizer if isinstance(tokenizer, int) else sp.serialized_model_proto()
    docs = [doc for f in text_files for doc in read_documents(f)]
    source = {"kind": "text", "files": [{"name": Path(f).name, "sha256": sha256_file(Path(f))} for f in text_files]}
    n_val = val_docs if val_docs is not None else max(1, int(len(docs) * val_fraction + 1e-9))  # int() is floor() here
    return export_dataset(
        docs, model, out_dir, val_docs=n_val, shard_tokens=shard_tokens, source=source, log=log, caseops=caseops
    )


# -- the embedded sample --------------------------------------------------------------------------------------------


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
    settings = {**TRAINER_SETTINGS, "vocab": SAMPLE_VOCAB, "val": SAMPLE_VAL, "shard": SAMPLE_SHARD}
    h.update(json.dumps([settings, spm.__version__, SAMPLE_VERSION], sort_keys=True).encode())
    return h.hexdigest()[:16]


def sample_documents() -> list[str]:
    raw = zstandard.ZstdDecompressor().decompress(SAMPLE_TEXT.read_bytes())
    return [json.loads(line)["text"] for line in raw.decode("utf-8").splitlines()]


def ensure_sample_data(cache_dir: str | Path | None = None, log: Log = print) -> BuiltDataset:
    """The sample dataset, built on first use (a few seconds) and cached under `cache_root()`; a published cache
    entry is checked against its manifest (a user may have deleted files)."""
    path = cache_root(cache_dir) / f"sample-{sample_key()}"
    if (manifest := read_manifest(path)) is not None:
        for name, info in {**manifest["files"], "tokenizer.model": None}.items():
            if not (f := path / name).is_file() or (info and f.stat().st_size != HEADER_BYTES + 2 * info["tokens"]):
                raise DataError(f"sample data cache {path} is incomplete ({name}); delete that directory to rebuild it")
        return BuiltDataset(path, path / "tokenizer.model", manifest)
    log(f"data: building the embedded sample dataset into {path} (once)")
    source = {"kind": "sample", "file": SAMPLE_TEXT.name, "sha256": sha256_file(SAMPLE_TEXT)}
    n_val = int(len(docs := sample_documents()) * SAMPLE_VAL)
    sample = export_dataset(docs, SAMPLE_VOCAB, path, val_docs=n_val, shard_tokens=SAMPLE_SHARD, source=source, log=log)
    stats = sample.manifest["stats"]
    log(f"data: sample ready: {stats['tokens_train']:,} train / {stats['tokens_val']:,} val tokens in {path}")
    return sample
