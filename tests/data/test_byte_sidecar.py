"""BPB's bytes from a per-token byte sidecar (the CaseOps records): a CaseOps tokenizer trained here on the
embedded sample, validation shards and their `fineweb_val_bytes_*` sidecar written as the records write them, then
read through the run's own data loading. The denominator is the sidecar's sum, which is the UTF-8 byte count of the
original validation text, exactly; the tokenizer's byte tables would count another (larger) number.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from pgolf_core import evaluation
from pgolf_core.data import caseops
from pgolf_core.data.build import sample_documents
from pgolf_core.data.tokens import SidecarBytes, build_byte_tables, shard_files, write_shard
from pgolf_core.model import ModelSpec
from pgolf_core.recipe import read_recipe
from pgolf_core.registry import plugin_classes
from pgolf_core.run import load_data
from pgolf_core.types import DataError, Env
from tests.tiny import baseline_gpt

BOS = 1
CPU = Env(torch.device("cpu"))


def caseops_tokenizer(docs: list[str]) -> spm.SentencePieceProcessor:
    """A 512-piece BPE model of the CaseOps text, its markers reserved as the records reserve them; identity
    normalization and every character covered, so that the pieces spell the encoded text exactly."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for d in docs for line in caseops.encode(d).splitlines() if line]),
        model_writer=model, vocab_size=512, model_type="bpe", character_coverage=1.0, byte_fallback=False,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        user_defined_symbols=[*caseops.RESERVED, "\n", "\t"], pad_id=0, bos_id=BOS, eos_id=2, unk_id=3,
        num_threads=1, hard_vocab_limit=False,
    )  # fmt: skip
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def tokens_and_sidecar(sp: spm.SentencePieceProcessor, docs: list[str]) -> tuple[list[int], list[int]]:
    """BOS + the pieces of each document, and each token's original bytes (0 for BOS), as the records' data script."""
    tokens, sidecar = [], []
    for doc in docs:
        ids = sp.encode(caseops.encode(doc))
        surfaces = [sp.id_to_piece(i).replace("\u2581", " ") for i in ids]
        assert "".join(surfaces) == caseops.encode(doc), "the pieces must spell the text for this test to hold"
        tokens += [BOS, *ids]
        sidecar += [0, *caseops.original_bytes(surfaces)]
    return tokens, sidecar


@pytest.fixture(scope="module")
def caseops_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[int], list[int]]:
    docs = sample_documents()
    train_docs, val_docs = docs[12:24], docs[:12]
    root = tmp_path_factory.mktemp("caseops")
    sp = caseops_tokenizer(train_docs + val_docs)
    (root / "tokenizer.model").write_bytes(sp.serialized_model_proto())
    train, _ = tokens_and_sidecar(sp, train_docs)
    val, sidecar = tokens_and_sidecar(sp, val_docs)
    write_shard(root / "fineweb_train_000000.bin", train)
    half = len(val) // 2  # two shards each, to pair them shard by shard
    for k, (a, b) in enumerate([(0, half), (half, len(val))]):
        write_shard(root / f"fineweb_val_{k:06d}.bin", val[a:b])
        write_shard(root / f"fineweb_val_bytes_{k:06d}.bin", sidecar[a:b])
    return root, val_docs, val, sidecar


def recipe_for(root: Path, *sets: str):
    overrides = [f"data.path={root}", "model.vocab_size=512", "train.train_seq_len=64", "eval.max_tokens=0", *sets]
    return read_recipe(None, overrides, plugin_classes=plugin_classes)


def test_the_denominator_is_the_original_texts_bytes_not_the_tables(caseops_data):
    root, val_docs, val, sidecar = caseops_data
    original = sum(len(d.encode("utf-8")) for d in val_docs)
    assert sum(sidecar) == original  # the records' sidecar rule, on pgolf's CaseOps
    recipe = recipe_for(root, "data.val_bytes_pattern=fineweb_val_bytes_*.bin", "eval.max_tokens=8192")
    data = load_data(recipe, CPU, print, train=False)
    assert isinstance(data.tables, SidecarBytes)
    stream = data.val_tokens.to(torch.int64)  # cut to k * seq_len + 1 tokens (max_tokens, then whole rows)
    at = torch.arange(1, stream.numel())
    assert int(data.tables.target_bytes(stream[:-1], stream[1:], at).sum()) == sum(sidecar[1 : stream.numel()])
    # The evaluators divide by exactly that: the standard rows and the sliding windows.
    model = baseline_gpt(ModelSpec(vocab_size=512, num_layers=1, model_dim=32, num_heads=4, num_kv_heads=2))
    want = sum(sidecar[1 : stream.numel()])
    assert evaluation.eval_standard(model, data.val_tokens, 64, 4, data.tables, CPU).bytes == want
    assert evaluation.eval_sliding(model, data.val_tokens, 64, 32, 4, data.tables, CPU, "once").bytes == want
    # The tokenizer's byte tables count the bytes of the transformed pieces (each marker 3): another, larger number
    # (so a run refuses a CaseOps tokenizer without its sidecar, below).
    tables = build_byte_tables(spm.SentencePieceProcessor(model_file=str(root / "tokenizer.model")), 512)
    assert int(tables.target_bytes(stream[:-1], stream[1:], at).to(torch.int64).sum()) > want * 1.005


def test_a_caseops_tokenizer_without_a_sidecar_is_refused(caseops_data):
    root, *_ = caseops_data
    with pytest.raises(
        DataError, match=r"tokenizer .*tokenizer\.model is a CaseOps tokenizer .*: set \[data\] val_bytes_pattern"
    ):
        load_data(recipe_for(root), CPU, print, train=False)


def test_tokens_and_sidecars_side_by_side_are_told_apart(caseops_data):
    """`fineweb_val_*.bin` also matches `fineweb_val_bytes_*.bin`: the token pattern reads only the token shards."""
    root, _, val, _ = caseops_data
    files = shard_files(root, "fineweb_val_*.bin")
    assert [f.name for f in files] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert [f.name for f in shard_files(root, "fineweb_val_*.bin", sidecars=True)] == [
        "fineweb_val_bytes_000000.bin",
        "fineweb_val_bytes_000001.bin",
    ]


def test_a_sidecar_where_tokens_are_expected_is_refused_by_name(caseops_data):
    root, *_ = caseops_data
    with pytest.raises(
        DataError, match=r"fineweb_val_bytes_000000\.bin \.\.\. are per-token byte sidecars, not tokens"
    ):
        shard_files(root, "fineweb_val_bytes_*.bin")
    with pytest.raises(DataError, match=r"fineweb_val_000000\.bin \.\.\. are token shards"):
        shard_files(root, "fineweb_val_0*.bin", sidecars=True)


def test_a_sidecar_that_does_not_pair_with_the_tokens_is_refused(caseops_data, tmp_path):
    root, _, val, sidecar = caseops_data
    for f in root.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    write_shard(tmp_path / "fineweb_val_bytes_000001.bin", sidecar[len(val) // 2 : -1])  # one value short
    recipe = recipe_for(tmp_path, "data.val_bytes_pattern=fineweb_val_bytes_*.bin")
    n = len(val)
    with pytest.raises(
        DataError, match=rf"fineweb_val_bytes_000000\.bin \.\.\. hold {n - 1} values for {n} validation"
    ):
        load_data(recipe, CPU, print, train=False)
    shifted = [7, *sidecar[: len(val) // 2 - 1]]  # right length, but a BOS now counts bytes: misaligned
    write_shard(tmp_path / "fineweb_val_bytes_000000.bin", shifted)
    write_shard(tmp_path / "fineweb_val_bytes_000001.bin", sidecar[len(val) // 2 :])
    with pytest.raises(DataError, match=r"fineweb_val_bytes_000000\.bin \.\.\.: validation token 0 is BOS but counts"):
        load_data(recipe, CPU, print, train=False)


def test_the_audit_totals_the_sidecar_and_shows_the_tables_other_figure(caseops_data):
    """`pgolf data check` on CaseOps data: the sidecar pairs with the tokens and sums to the original text's bytes;
    the byte table's figure, printed beside it, is another (larger) number."""
    from pgolf_core.data.check import audit

    root, val_docs, _, sidecar = caseops_data
    lines: list[str] = []
    problems = audit(root, None, lines.append)
    original = sum(len(d.encode("utf-8")) for d in val_docs)
    assert f"ok      byte sidecar: {original:,} bytes, one per validation token, 0 at BOS" in lines
    table = next(line for line in lines if "by the tokenizer's table" in line)
    # Exactly the transformed text's bytes (each marker 3): the pieces spell it, and no document starts with a space.
    assert int(table.rsplit(" ", 1)[1].replace(",", "")) == sum(len(caseops.encode(d).encode()) for d in val_docs)
    assert problems == [f"no manifest.json in {root}: nothing records which files belong together or the split"]
