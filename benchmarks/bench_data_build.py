"""Throughput of `pgolf data build` (`pgolf_core.data.build.build_dataset`) against the records' own exporters, on
the same text: plain SentencePiece (the official `data/download_hf_docs_and_tokenize.py` of openai/parameter-golf)
and CaseOps with its validation byte sidecar (the CaseOps record's `prepare_caseops_data.py`).

The text is the embedded sample (378 documents, 1,711,069 bytes) written `--copies` times into one `.jsonl` file;
each document that repeats an earlier one (every later copy, and one document the sample holds twice) gets the
suffix " (n)", n its line number, so that all are distinct: pgolf leaves out training documents that copy a
validation one and the records keep them, so only with distinct documents do both write the same shards. The first
`--val-docs` documents are validation; by default the leading documents holding 0.77% of the text, the official
set's validation share (62M of its 8.06e9 sp1024 tokens); the CaseOps sidecar is computed for those only. The
tokenizers are given, not trained (the records' exporters are timed tokenizing, not training): the official sp1024
model for plain, the record's CaseOps sp8192 model for CaseOps.

What is timed, per side, from the `.jsonl` file on disk to finished shards:
* pgolf plain / CaseOps: `build_dataset([jsonl], tokenizer=MODEL, val_docs=N, shard_tokens=S, caseops=...)`, the
  whole build (read, tokenize, shards, hashes, manifest); S = 10**8 for plain (both sides' default) and 10**7 for
  CaseOps (the record's `SHARD_TOKENS`).
* record plain: the script's `build_sentencepiece_tokenizer` (with `reuse_model_path`, so no training) and
  `export_shards` (batches of 1,024 documents, `num_threads=os.cpu_count()`), what its `main()` runs after the
  download; the document count is given, as the download's sidecar gives it.
* record CaseOps: the script's `main()` with its own arguments (`--docs --out --sp --val-docs`).
The record files are imported from the paths you give (never vendored). One adaptation: the CaseOps script calls
`SentencePieceProcessor.encode_as_immutable_proto`, which newer sentencepiece releases (0.2.3 here) lack; where it is
missing, the script's processor class is given that method as `encode(text, out_type="proto")` (the call pgolf
makes). The official script imports `huggingface_hub` at top level (for the download, not run here); where that is
not installed, a stand-in module is put in its place.

First every side builds one copy of the sample with half of it validation, and the four outputs are compared byte for
byte (every `fineweb_*.bin`: names, headers, tokens, sidecars); each timed build's shards are compared the same way.
Rounds alternate between the four so that machine load hits all alike; each figure is the median over rounds.
Projected hours for the 80-shard set, one process on this machine: 8e9 tokens at each side's tokens/s, and the
set's text (8e9 sp1024 tokens at 2.437 bytes each, 19.5 GB) at each side's MB/s, the fairer figure for CaseOps,
whose sp8192 tokens each cover more text.

    python benchmarks/bench_data_build.py --official-script PATH/TO/download_hf_docs_and_tokenize.py \\
        --sp1024 PATH/TO/fineweb_1024_bpe.model --caseops-script PATH/TO/prepare_caseops_data.py \\
        --caseops-model PATH/TO/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model [--copies 10] [--rounds 5]

It prints a markdown table (pasted into docs/benchmarks.md by hand; it does not write that file).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import load_record  # noqa: E402
from pgolf_core.data.build import build_dataset, sample_documents  # noqa: E402

FULL_SET_TOKENS = 8e9  # the 80 training shards of 10**8 tokens
# Its validation split, as the records' logs count it: 62,021,632 sp1024 tokens, 151,130,112 byte260 tokens
# (bytes + one BOS per document): 2.437 bytes of text per sp1024 token, and 0.77% of the set's tokens.
FULL_SET_TEXT_BYTES = FULL_SET_TOKENS * 151_130_112 / 62_021_632
VAL_SHARE = 62_021_632 / (FULL_SET_TOKENS + 62_021_632)
PLAIN_SHARD = 10**8  # the official exporter's SHARD_SIZE and pgolf's default
CASEOPS_SHARD = 10**7  # the CaseOps record's SHARD_TOKENS
CASEOPS_SUBDIR = Path("datasets") / "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
SIDES = ["pgolf plain", "record plain", "pgolf CaseOps", "record CaseOps"]


class _WithImmutableProto(spm.SentencePieceProcessor):
    """The record's processor, with the method newer sentencepiece releases lack (same pieces and surfaces)."""

    def encode_as_immutable_proto(self, text: str):
        return self.encode(text, out_type="proto")


def load_registered(path: Path, required: str, name: str) -> types.ModuleType:
    """`load_record` for a script that must be in `sys.modules` while it runs: the official exporter defines
    dataclasses under `from __future__ import annotations`, and `dataclasses` looks the module up there."""
    if not Path(path).is_file():
        raise SystemExit(f"{path}: no such file")
    if importlib.util.find_spec("huggingface_hub") is None:  # imported for the download only, never called here
        hub, utils = types.ModuleType("huggingface_hub"), types.ModuleType("huggingface_hub.utils")
        hub.hf_hub_download, utils.EntryNotFoundError = None, LookupError  # type: ignore[attr-defined]
        sys.modules |= {"huggingface_hub": hub, "huggingface_hub.utils": utils}
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, required):
        raise SystemExit(f"{path}: no {required} (not the script this needs)")
    return module


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores"


def write_jsonl(path: Path, copies: int) -> list[str]:
    """The sample `copies` times, each document that repeats an earlier one with the suffix " (n)", n its line
    number, so that all are distinct; returns the documents."""
    docs: list[str] = []
    seen: set[str] = set()
    for n, doc in enumerate(sample_documents() * copies):
        docs.append(doc if doc not in seen else f"{doc} ({n})")
        seen.add(docs[-1])
    assert len(seen) == len(docs)
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return docs


def shards(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("fineweb_*.bin"))}


def tokens_written(files: dict[str, bytes]) -> int:
    """Tokens in the token shards (sidecars left out), from each header's count."""
    return sum(int(np.frombuffer(b[:12], dtype="<i4")[2]) for name, b in files.items() if "_bytes_" not in name)


def same_shards(what: str, ours: dict[str, bytes], theirs: dict[str, bytes]) -> None:
    if not ours:
        raise SystemExit(f"{what}: pgolf wrote no shards")
    if ours.keys() != theirs.keys():
        raise SystemExit(f"{what}: different shard files: pgolf {sorted(ours)}, record {sorted(theirs)}")
    if bad := [name for name in ours if ours[name] != theirs[name]]:
        raise SystemExit(f"{what}: shards differ from the record's: {bad}: not comparable")


class Builders:
    """The four builders; each call builds into a fresh directory and returns (seconds, {shard name: bytes})."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work, self.runs = args, work, 0
        self.official = load_registered(args.official_script, "export_shards", "record_official_export")
        self.caseops = load_record(args.caseops_script, "main")
        if not hasattr(spm.SentencePieceProcessor, "encode_as_immutable_proto"):
            self.caseops.spm = types.SimpleNamespace(SentencePieceProcessor=_WithImmutableProto)

    def fresh(self) -> Path:
        self.runs += 1
        return self.work / f"out{self.runs}"

    def timed(self, build: Callable[[Path], Path]) -> tuple[float, dict[str, bytes]]:
        out = self.fresh()
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            written = build(out)
        seconds = time.perf_counter() - start
        files = shards(written)
        shutil.rmtree(out)
        return seconds, files

    def run(self, side: str, jsonl: Path, n_docs: int, val_docs: int) -> tuple[float, dict[str, bytes]]:
        args = self.args

        def pgolf(caseops: bool) -> Callable[[Path], Path]:
            model, shard = (args.caseops_model, CASEOPS_SHARD) if caseops else (args.sp1024, PLAIN_SHARD)
            how = dict(log=lambda _: None, shard_tokens=shard, val_docs=val_docs, caseops=caseops)
            return lambda out: build_dataset([jsonl], model, out, **how).path

        def record_plain(out: Path) -> Path:
            spec = {"vocab_size": 1024, "reuse_model_path": str(args.sp1024)}
            tok = self.official.build_sentencepiece_tokenizer(spec=spec, docs_jsonl=jsonl, tokenizers_dir=out / "tok")
            data = out / "datasets" / "fineweb10B_sp1024"
            self.official.export_shards(
                jsonl, tok, data, num_val_docs=val_docs, shard_size=PLAIN_SHARD, docs_total=n_docs
            )
            return data

        def record_caseops(out: Path) -> Path:
            argv = ["prepare_caseops_data.py", "--docs", str(jsonl), "--out", str(out), "--sp", str(args.caseops_model)]
            saved, sys.argv = sys.argv, [*argv, "--val-docs", str(val_docs)]
            try:
                self.caseops.main()
            finally:
                sys.argv = saved
            return out / CASEOPS_SUBDIR

        build = {
            "pgolf plain": pgolf(False),
            "record plain": record_plain,
            "pgolf CaseOps": pgolf(True),
            "record CaseOps": record_caseops,
        }[side]
        return self.timed(build)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-script", type=Path, required=True, help="data/download_hf_docs_and_tokenize.py")
    ap.add_argument("--sp1024", type=Path, required=True, help="the official fineweb_1024_bpe.model")
    ap.add_argument("--caseops-script", type=Path, required=True, help="the record's prepare_caseops_data.py")
    ap.add_argument("--caseops-model", type=Path, required=True, help="the record's CaseOps SentencePiece model")
    ap.add_argument("--copies", type=int, default=10, help="copies of the sample in the timed file")
    ap.add_argument("--val-docs", type=int, help="validation documents (default: the official share, 0.77%% of text)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    for path in (args.sp1024, args.caseops_model):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")

    print(f"machine: {machine()}; Python {platform.python_version()}, sentencepiece {spm.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_data_build.") as name:
        work = Path(name)
        builders = Builders(args, work)

        # Equality first: one copy of the sample, half of it validation (so the sidecar covers 189 documents).
        check = work / "check.jsonl"
        n_check = len(write_jsonl(check, 1))
        out = {side: builders.run(side, check, n_check, n_check // 2)[1] for side in SIDES}
        same_shards("plain, check", out["pgolf plain"], out["record plain"])
        same_shards("CaseOps, check", out["pgolf CaseOps"], out["record CaseOps"])
        files = {side: len(out[side]) for side in SIDES}
        print(
            f"check: {n_check} documents, {n_check // 2} validation: pgolf's shards equal the records' "
            f"(plain {files['pgolf plain']} files, CaseOps {files['pgolf CaseOps']} files with the sidecar)"
        )

        jsonl = work / "text.jsonl"
        sizes = np.cumsum([len(doc.encode("utf-8")) for doc in write_jsonl(jsonl, args.copies)])
        n_docs, text_bytes = len(sizes), int(sizes[-1])
        val_docs = args.val_docs or int(np.searchsorted(sizes, VAL_SHARE * text_bytes)) + 1
        print(f"timed text: {n_docs} documents, {text_bytes:,} bytes of text (file {jsonl.stat().st_size:,} bytes), "
              f"{val_docs} validation; load avg {os.getloadavg()[0]:.1f}")  # fmt: skip
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        tokens: dict[str, int] = {}
        for _ in range(args.rounds):
            out = {}
            for side in SIDES:
                seconds, out[side] = builders.run(side, jsonl, n_docs, val_docs)
                times[side].append(seconds)
                tokens[side] = tokens_written(out[side])
            same_shards("plain, timed", out["pgolf plain"], out["record plain"])
            same_shards("CaseOps, timed", out["pgolf CaseOps"], out["record CaseOps"])
            val_tokens = {k: tokens_written({n: b for n, b in v.items() if "_val_" in n}) for k, v in out.items()}
    load_after = os.getloadavg()[0]

    result: dict[str, dict[str, float]] = {}
    for side in SIDES:
        seconds = statistics.median(times[side])
        result[side] = {"seconds": seconds, "MB/s": text_bytes / 1e6 / seconds, "tokens/s": tokens[side] / seconds,
                        "tokens": tokens[side], "val_tokens": val_tokens[side]}  # fmt: skip
        result[side]["hours"] = FULL_SET_TOKENS / result[side]["tokens/s"] / 3600
        result[side]["hours_text"] = FULL_SET_TEXT_BYTES / 1e6 / result[side]["MB/s"] / 3600
    for ours, theirs in (("pgolf plain", "record plain"), ("pgolf CaseOps", "record CaseOps")):
        result[ours]["ratio"] = result[ours]["tokens/s"] / result[theirs]["tokens/s"]

    print(f"rounds: {args.rounds} (median); load avg after {load_after:.1f}")
    text_gb = f"{FULL_SET_TEXT_BYTES / 1e9:.1f} GB"
    columns = ["build", "tokens", "validation share", "s (median)", "MB/s of text", "tokens/s", "pgolf / record",
               "hours for 8e9 tokens", f"hours for the 80-shard set's text ({text_gb})"]  # fmt: skip
    print("\n| " + " | ".join(columns) + " |\n|---" + "|---:" * (len(columns) - 1) + "|")
    for side in SIDES:
        r = result[side]
        cells = [side, f"{r['tokens']:,}", f"{r['val_tokens'] / r['tokens']:.2%}", f"{r['seconds']:.2f}",
                 f"{r['MB/s']:.2f}", f"{r['tokens/s'] / 1e6:.2f}M", f"{r['ratio']:.2f}x" if "ratio" in r else "",
                 f"{r['hours']:.2f}", f"{r['hours_text']:.2f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    return result


if __name__ == "__main__":
    main()
