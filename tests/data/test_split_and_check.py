"""A split that cannot leak, and the audit a reviewer runs (issue #21): `pgolf data build` makes validation the first
documents and training the rest without copies of them, records both sides' fingerprints, `pgolf run` refuses a
directory whose manifest says the sides overlap (or does not list the files it reads) and warns when nothing proves
the split, and `pgolf data check` recomputes everything from the shards. The CaseOps build writes the validation
byte sidecar whose sum is the original text's UTF-8 byte count, exactly.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from pgolf_core.cli import main
from pgolf_core.data import caseops
from pgolf_core.data.build import BuiltDataset, build_dataset, ensure_sample_data, sample_documents
from pgolf_core.data.check import audit, documents, side_fingerprint
from pgolf_core.data.tokens import (
    SidecarBytes,
    build_byte_tables,
    document_starts,
    read_shard,
    shard_files,
    write_shard,
)
from pgolf_core.recipe import read_recipe
from pgolf_core.registry import plugin_classes
from pgolf_core.run import load_data
from pgolf_core.types import DataError, Env
from tests.data.test_byte_sidecar import caseops_tokenizer

CPU = Env(torch.device("cpu"))


def quiet(msg: str) -> None:
    pass


def jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltDataset, list[str]]:
    """40 sample documents, the first 8 validation; training repeats validation documents 2 and 5 (left out)."""
    root = tmp_path_factory.mktemp("split")
    docs = [d.strip() for d in sample_documents()[:40]]
    corpus = [*docs[:20], docs[2], *docs[20:], docs[5]]
    return build_dataset([jsonl(root / "docs.jsonl", corpus)], 300, root / "ds", val_docs=8, log=quiet), corpus


def test_the_split_is_disjoint_by_construction(built: tuple[BuiltDataset, list[str]]) -> None:
    data, corpus = built
    split, stats = data.manifest["split"], data.manifest["stats"]
    assert split["val"]["docs"] == [0, 8] and split["train"]["docs"] == [8, 42]
    assert split["copies_left_out"] == 2 and split["shared_docs"] == 0
    assert (stats["docs_val"], stats["docs_train"]) == (8, 32)
    sp = spm.SentencePieceProcessor(model_file=str(data.tokenizer))
    val, _, _ = documents(shard_files(data.path, "fineweb_val_*.bin"), 1)
    train, lengths, lead = documents(shard_files(data.path, "fineweb_train_*.bin"), 1)
    assert lead == 0 and len(val) == 8 and len(train) == 32 and not set(val) & set(train)
    assert lengths[0] == len(sp.encode(corpus[8]))  # training starts right after the validation documents
    assert side_fingerprint(val) == split["val"]["sha256"] and side_fingerprint(train) == split["train"]["sha256"]
    kinds = {name: (f["kind"], f["split"]) for name, f in data.manifest["files"].items()}
    assert kinds["fineweb_val_000000.bin"] == ("tokens", "val") and kinds["fineweb_train_000000.bin"][1] == "train"


def test_document_starts_is_the_bos_mask() -> None:
    tokens = torch.tensor([1, 5, 6, 1, 1, 7, 2])
    assert document_starts(tokens, 1).nonzero().flatten().tolist() == [0, 3, 4]
    compiled = torch.compile(document_starts, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(tokens.view(1, -1), 1), document_starts(tokens.view(1, -1), 1))


def test_the_sample_data_has_no_shared_document_and_passes_the_audit(sample_cache: Path) -> None:
    sample = ensure_sample_data(log=quiet)
    lines: list[str] = []
    assert audit(sample.path, None, lines.append) == []
    assert "ok      train/val overlap: 0 validation documents also in training (fingerprints)" in lines
    assert sample.manifest["split"]["shared_docs"] == 0 and sample.manifest["split"]["copies_left_out"] == 0


def copy_of(data: BuiltDataset, dest: Path) -> Path:
    shutil.copytree(data.path, dest)
    return dest


def recipe_for(root: Path, *sets: str):
    overrides = [f"data.path={root}", "model.vocab_size=300", "train.train_seq_len=64", *sets]
    return read_recipe(None, overrides, plugin_classes=plugin_classes)


def test_an_overlapping_directory_is_refused_by_run_and_flagged_by_check(built, tmp_path, capsys) -> None:
    data, _ = built
    # A leak made by hand: a training shard holding the first validation documents again, as the records' data
    # script did with its default of 10,000 validation documents out of 50,000 scored.
    root = copy_of(data, tmp_path / "leaky")
    val = read_shard(root / "fineweb_val_000000.bin")
    three = val[: int(document_starts(val, 1).nonzero()[3])]  # the first three validation documents
    leak = write_shard(root / "fineweb_train_000009.bin", three)
    with pytest.raises(DataError, match=r"fineweb_train_000009\.bin is not in .*manifest\.json"):
        load_data(recipe_for(root), CPU, quiet)  # the manifest does not list it: its proof does not cover it
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][leak.name] = {"tokens": len(three), "kind": "tokens", "split": "train"}
    manifest["split"]["train"]["docs"] = [3, 42]  # an honest manifest of that leak
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"validation documents \[0, 8\] and the training documents \[3, 42\] overlap"):
        load_data(recipe_for(root), CPU, quiet)
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM train/val overlap: 3 validation documents also in training (fingerprints)" in out
    assert "problem(s) in" in out
    assert "PROBLEM train: fingerprint" in out  # the shards are not the ones the manifest fingerprinted


def test_without_a_manifest_the_run_warns(built, tmp_path) -> None:
    data, _ = built
    root = copy_of(data, tmp_path / "bare")
    (root / "manifest.json").unlink()
    logged: list[str] = []
    load_data(recipe_for(root), CPU, logged.append)
    assert any("warning: nothing proves the validation documents" in m and "pgolf data check" in m for m in logged)


def test_a_sidecar_renamed_as_a_token_shard_is_refused_by_the_manifest(tmp_path: Path) -> None:
    docs = [d.strip() for d in sample_documents()[:30]]
    data = build_dataset([jsonl(tmp_path / "d.jsonl", docs)], 300, tmp_path / "ds", val_docs=6, shard_tokens=3000)
    manifest = json.loads((data.path / "manifest.json").read_text())
    for k, shard in enumerate(shard_files(data.path, "fineweb_val_*.bin")):  # a sidecar beside each validation shard
        tokens = read_shard(shard)
        sidecar = write_shard(
            data.path / f"fineweb_val_bytes_{k:06d}.bin", (~document_starts(tokens, 1)).to(torch.int32)
        )
        manifest["files"][sidecar.name] = {"tokens": tokens.numel(), "kind": "bytes", "split": "val"}
    (data.path / "manifest.json").write_text(json.dumps(manifest))
    recipe = recipe_for(data.path, "data.val_bytes_pattern=fineweb_val_bytes_*.bin")
    assert isinstance(load_data(recipe, CPU, quiet).tables, SidecarBytes)  # as listed: BPB's bytes are the sidecar's
    (data.path / "fineweb_val_bytes_000000.bin").rename(data.path / "fineweb_val_000009.bin")
    with pytest.raises(DataError, match=r"fineweb_val_000009\.bin is not in .*manifest\.json as a tokens file"):
        load_data(recipe, CPU, quiet)


def test_check_flags_each_kind_of_problem(built, tmp_path: Path, capsys) -> None:
    data, _ = built
    root = copy_of(data, tmp_path / "bad")
    (root / "fineweb_val_000000.bin").unlink()  # a listed shard gone
    write_shard(root / "fineweb_train_000000.bin", [7, 1, 5, 6])  # not as listed, and no BOS first
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    for problem in (
        "PROBLEM fineweb_val_000000.bin: [Errno 2] No such file or directory",
        "PROBLEM fineweb_train_000000.bin: sha256",
        "PROBLEM train: the stream starts with BOS (1 tokens before the first)",
    ):
        assert problem in out, problem
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2


def test_check_flags_a_caseops_tokenizer_without_a_sidecar(built, tmp_path: Path, capsys) -> None:
    data, _ = built
    model = tmp_path / "caseops.model"
    model.write_bytes(caseops_tokenizer(sample_documents()[:12]).serialized_model_proto())
    assert main(["data", "check", str(data.path), "--tokenizer", str(model)]) == 1
    assert "PROBLEM a CaseOps tokenizer without a byte sidecar" in capsys.readouterr().out


def test_build_command_with_a_given_tokenizer(built, tmp_path: Path, capsys) -> None:
    data, _ = built
    text = jsonl(tmp_path / "more.jsonl", [d.strip() for d in sample_documents()[30:50]])
    args = ["data", "build", "--text", str(text), "--out", str(tmp_path / "b"), "--val-docs", "5"]
    assert main([*args, "--tokenizer", str(data.tokenizer)]) == 0
    assert "model.vocab_size=300" in capsys.readouterr().out
    assert (tmp_path / "b" / "tokenizer.model").read_bytes() == data.tokenizer.read_bytes()
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["split"]["val"]["docs"] == [0, 5]
    args[5] = str(tmp_path / "c")
    assert main([*args, "--tokenizer", str(data.tokenizer), "--caseops"]) == 2
    assert "the tokenizer lacks the CaseOps markers (--caseops goes with them)" in capsys.readouterr().err
    assert main(args) == 2
    assert "give --vocab-size N (train a tokenizer) or --tokenizer MODEL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "culprit"),
    [
        (lambda m: m["split"]["train"].update(docs="8-42"), "'docs' are document ranges [first, end)"),
        (lambda m: m["split"]["train"].update(docs=[42, 8]), "with 0 <= first <= end"),
        (lambda m: m.update(split=[1, 2]), "expected 'split' with 'val' and 'train' objects"),
        (lambda m: m["files"].update({"fineweb_val_000000.bin": 7}), "whose 'files' maps names to objects"),
    ],
)
def test_a_malformed_manifest_is_a_clear_error(built, tmp_path, capsys, edit, culprit) -> None:
    data, _ = built
    root = copy_of(data, tmp_path / "odd")
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=re.escape(culprit)):
        load_data(recipe_for(root), CPU, quiet)
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert culprit in err and str(root / "manifest.json") in err and "Traceback" not in err


def test_check_reads_a_manifest_without_files_and_flags_bad_validation_shards(built, tmp_path, capsys) -> None:
    """The hub's manifest.json has no 'files'; a validation id over the vocabulary, a truncated shard and a stream
    without BOS are problems (exit 1), reported without a traceback."""
    data, _ = built
    root = copy_of(data, tmp_path / "hubby")
    (root / "manifest.json").write_text(json.dumps({"datasets": [], "tokenizers": []}))
    write_shard(root / "fineweb_val_000000.bin", [1, 5, 400])
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "holds token id 400, but [model] vocab_size = 300" in out and "problem(s) in" in out
    shard = root / "fineweb_val_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    assert main(["data", "check", str(root)]) == 1
    assert "fineweb_val_000000.bin size mismatch: header says 3 tokens" in capsys.readouterr().out
    write_shard(shard, [5, 6, 7])
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM val: 0 documents" in out and "PROBLEM val: the stream starts with BOS (3 tokens" in out
    assert main(["data", "check", str(root), "--tokenizer", str(tmp_path / "none.model")]) == 2
    assert "none.model not found" in capsys.readouterr().err


def test_build_refuses_a_tokenizer_whose_bos_is_not_1(tmp_path: Path, capsys) -> None:
    docs = [d.strip() for d in sample_documents()[:20]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs), model_writer=model, vocab_size=200, model_type="bpe", bos_id=2, eos_id=1,
        minloglevel=2, hard_vocab_limit=False,
    )  # fmt: skip
    (tmp_path / "eos1.model").write_bytes(model.getvalue())
    text = jsonl(tmp_path / "d.jsonl", docs)
    with pytest.raises(DataError, match=r"eos1\.model: BOS is id 2; the challenge's shards need BOS = 1"):
        build_dataset([text], tmp_path / "eos1.model", tmp_path / "out", log=quiet)
    assert main(["data", "build", "--text", str(text), "--tokenizer", "", "--out", str(tmp_path / "o")]) == 2
    assert "give --vocab-size N (train a tokenizer) or --tokenizer MODEL" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def build_caseops(tmp_path: Path, **how) -> BuiltDataset:
    docs = [d.strip() for d in sample_documents()[:30]]
    text = jsonl(tmp_path / "docs.jsonl", docs)
    return build_dataset([text], 400, tmp_path / "caseops", val_docs=6, log=quiet, caseops=True, **how)


def test_caseops_build_writes_the_sidecar_of_the_original_bytes(tmp_path: Path) -> None:
    data = build_caseops(tmp_path, shard_tokens=3000)
    docs = [d.strip() for d in sample_documents()[:6]]
    sidecars = shard_files(data.path, "fineweb_val_bytes_*.bin", sidecars=True)
    tokens = shard_files(data.path, "fineweb_val_*.bin")
    assert len(sidecars) == len(tokens) > 1 and data.manifest["caseops"]
    assert not list(data.path.glob("fineweb_train_bytes_*"))  # the sidecar is the validation side's only
    values = torch.cat([read_shard(f) for f in sidecars]).to(torch.int64)
    val = torch.cat([read_shard(f) for f in tokens]).to(torch.int64)
    original = sum(len(d.encode("utf-8")) for d in docs)
    assert int(values.sum()) == original  # the denominator is the original text's bytes, exactly
    sp = spm.SentencePieceProcessor(model_file=str(data.tokenizer))
    assert [sp.piece_to_id(c) for c in caseops.RESERVED] == [4, 5, 6, 7]  # the first pieces after the controls
    cuts = [*document_starts(val, 1).nonzero().flatten().tolist(), val.numel()]
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        # The tokens' surfaces (the text each stands for, before SentencePiece's normalization) decode back to the
        # original document exactly: the text whose bytes the sidecar counts.
        pieces = sp.encode(caseops.encode(docs[i]), out_type="proto").pieces
        assert [q.id for q in pieces] == val[a + 1 : b].tolist()
        assert [0, *caseops.original_bytes(q.surface for q in pieces)] == values[a:b].tolist()
        assert caseops.decode("".join(q.surface for q in pieces)) == docs[i]
    # The run divides by that sum; the tokenizer's table would count another number.
    recipe = recipe_for(data.path, "model.vocab_size=400", "data.val_bytes_pattern=fineweb_val_bytes_*.bin")
    loaded = load_data(recipe, CPU, quiet, train=False)
    assert isinstance(loaded.tables, SidecarBytes)
    at = torch.arange(1, loaded.val_tokens.numel())
    stream = loaded.val_tokens.to(torch.int64)
    assert int(loaded.tables.target_bytes(stream[:-1], stream[1:], at).sum()) == int(values[1 : stream.numel()].sum())
    table = build_byte_tables(sp, 400).target_bytes(val[:-1], val[1:], torch.arange(1, val.numel()))
    assert int(table.to(torch.int64).sum()) > original * 1.005
    lines: list[str] = []
    assert audit(data.path, None, lines.append) == []
    assert f"ok      byte sidecar: {original:,} bytes, one per validation token, 0 at BOS" in lines


def test_caseops_build_without_protobuf_stops_before_training(tmp_path: Path, monkeypatch) -> None:
    """The sidecar reads the pieces' surfaces through protobuf: without it, a clear error before a tokenizer is
    trained (hours at SP8192 on FineWeb), and nothing written; plain data needs no protobuf."""
    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    text = jsonl(tmp_path / "docs.jsonl", [d.strip() for d in sample_documents()[:30]])
    log: list[str] = []
    with pytest.raises(DataError, match=r"the CaseOps byte sidecar needs protobuf: pip install 'pgolf\[data\]'"):
        build_dataset([text], 400, tmp_path / "caseops", val_docs=6, log=log.append, caseops=True)
    assert log == [] and not (tmp_path / "caseops").exists()
    assert build_dataset([text], 300, tmp_path / "plain", val_docs=6, log=quiet).manifest["caseops"] is False


def test_caseops_build_command(tmp_path: Path, capsys) -> None:
    """`--caseops` with a given CaseOps tokenizer: the same tokenizer, the sidecar, and the settings to use it; the
    tokenizer without `--caseops` is refused (its shards would have no sidecar)."""
    first = build_caseops(tmp_path)
    text = jsonl(tmp_path / "more.jsonl", [d.strip() for d in sample_documents()[30:50]])
    args = ["data", "build", "--text", str(text), "--tokenizer", str(first.tokenizer), "--val-docs", "5"]
    assert main([*args, "--out", str(tmp_path / "b"), "--caseops"]) == 0
    out = capsys.readouterr().out
    assert f"--set data.path={tmp_path / 'b'} --set data.tokenizer={tmp_path / 'b' / 'tokenizer.model'}" in out
    assert "--set model.vocab_size=400 --set data.val_bytes_pattern=fineweb_val_bytes_*.bin" in out
    assert (tmp_path / "b" / "tokenizer.model").read_bytes() == first.tokenizer.read_bytes()
    assert [p.name for p in (tmp_path / "b").glob("fineweb_val_bytes_*.bin")] == ["fineweb_val_bytes_000000.bin"]
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    assert "the tokenizer has the CaseOps markers (--caseops goes with them)" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
