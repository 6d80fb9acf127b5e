"""Run-side bad input and faults: a finished run is never destroyed or replaced without --overwrite,
a directory in use is never shared, bad data / eval input fails before anything is touched (exit 2),
and faults during a run (non-finite loss, a failed write) exit 1 with one line naming the culprit.

Every case asserts the exit code, that no traceback was printed, that the culprit is named, and,
where there is a target directory, that the finished run placed there beforehand is byte-identical.
Only three cases train at all (0-2 tiny steps); the rest fail during setup.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf_core import exporter, records
from pgolf_core.cli import main
from pgolf_core.data.tokens import write_shard
from pgolf_core.records import write_json_atomic
from pgolf_core.types import WriteFault

ROOT = Path(__file__).resolve().parents[2]
BASELINE = str(ROOT / "recipes" / "baseline.toml")
TINY = ["--smoke", "--set", "train.iterations=2", "--set", "train.max_wallclock_seconds=0"]
TINY += ["--set", "train.warmup_steps=0", "--set", "train.val_loss_every=0", "--set", "train.train_log_every=1"]


def finished_run(out: Path) -> dict[str, bytes]:
    """A finished run's files (what `check_free` and `Claim` look at), returned as a snapshot."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary.json": b'{"val_bpb": 1.5}\n', "train.log": b"step:1/2\n", "final_model.ptz": b"\x00model"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return snapshot(out)


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def sample(sample_cache: Path) -> object:
    from pgolf_core.data.build import ensure_sample_data

    return ensure_sample_data(log=lambda msg: None)


def data_dir(tmp: Path, sample: object, train: list[list[int]], val: list[int], tokenizer: bytes | None = None) -> Path:
    """A data folder with the given shards and the sample tokenizer (or `tokenizer` bytes)."""
    d = tmp / "data"
    d.mkdir()
    for i, tokens in enumerate(train):
        write_shard(d / f"fineweb_train_{i:06d}.bin", tokens)
    write_shard(d / "fineweb_val_000000.bin", val)
    tok = Path(sample.tokenizer)  # type: ignore[attr-defined]
    (d / "tokenizer.model").write_bytes(tokenizer if tokenizer is not None else tok.read_bytes())
    return d


GOOD = list(range(1, 1000)) * 40  # ~40k tokens, ids < 1024


# -- section 2: the run directory ------------------------------------------------------------------


def test_finished_run_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    before = finished_run(out)
    code, err = run_cli(capsys, "run", BASELINE, *TINY, "--out", str(out))
    assert code == 2 and "holds a finished run" in err and str(out / "summary.json") in err and "--overwrite" in err
    assert snapshot(out) == before


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_bytes(b"keep")
    code, err = run_cli(capsys, "run", BASELINE, *TINY, "--out", str(out))
    assert code == 2 and f"--out {out} is a file" in err and out.read_bytes() == b"keep"


def test_lock_of_a_live_process_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / records.LOCK).write_text(f"{other.pid} {os.uname().nodename}\n")
        before = snapshot(out)
        code, err = run_cli(capsys, "run", BASELINE, *TINY, "--out", str(out))
    finally:
        other.kill()
        other.wait()
    assert code == 2 and f"in use by another run: pid {other.pid}" in err and str(out) in err
    assert snapshot(out) == before


def test_lock_from_another_host_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / records.LOCK).write_text("4242 some-other-host\n")
    code, err = run_cli(capsys, "run", BASELINE, *TINY, "--out", str(out))
    assert code == 2 and "pid 4242 on some-other-host" in err


def test_lock_wins_over_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    before = finished_run(out)
    (out / records.LOCK).write_text("4242 some-other-host\n")
    before = snapshot(out)
    code, err = run_cli(capsys, "run", BASELINE, *TINY, "--overwrite", "--out", str(out))
    assert code == 2 and "in use by another run" in err and snapshot(out) == before


def test_overwrite_with_bad_input_keeps_the_finished_run(tmp_path, capsys, sample):
    out = tmp_path / "run"
    before = finished_run(out)
    d = data_dir(tmp_path, sample, [GOOD], GOOD, tokenizer=b"not a sentencepiece model")
    code, err = run_cli(capsys, "run", BASELINE, *TINY, "--overwrite", "--set", f"data.path={d}", "--out", str(out))
    assert code == 2 and str(d / "tokenizer.model") in err and "not a valid SentencePiece" in err
    assert snapshot(out) == before


def test_claim_takes_over_a_stale_lock_and_removes_temp_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / records.LOCK).write_text(f"{dead.pid} {os.uname().nodename}\n")
    for name in (".final_model.pt.x1y2.tmp", ".summary.json.tmp", "train.log", "final_model.pt"):
        (out / name).write_bytes(b"stale")
    (out / "notes.txt").write_bytes(b"mine")
    lines: list[str] = []
    claim = records.Claim()
    claim.take(out, overwrite=False, log=lines.append)
    assert (out / records.LOCK).read_text().split() == [str(os.getpid()), os.uname().nodename]
    assert sorted(p.name for p in out.iterdir()) == [records.LOCK, "notes.txt"]  # the user's own file stays
    assert any(f"stale lock {out / records.LOCK} (pid {dead.pid} is gone)" in line for line in lines)
    assert sum("left by an interrupted run" in line for line in lines) == 2
    claim.release()
    assert not (out / records.LOCK).exists()


def test_claim_replaces_a_finished_run_only_with_overwrite(tmp_path):
    out = tmp_path / "run"
    before = finished_run(out)
    with pytest.raises(records.PgolfError, match="holds a finished run"):
        records.Claim().take(out, overwrite=False, log=print)
    assert snapshot(out) == before
    claim = records.Claim()
    claim.take(out, overwrite=True, log=print)  # set aside until the new run writes its summary
    assert sorted(p.name for p in out.iterdir()) == [records.LOCK, records.SET_ASIDE]
    claim.release()  # ... which it did not (interrupted): the finished run is back, byte for byte
    assert snapshot(out) == before and not (out / records.SET_ASIDE).exists()


def test_unfinished_run_dir_is_accepted_without_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_bytes(b"half a run")
    records.check_free(out, overwrite=False)  # no summary.json: to be redone, no flag needed
    claim = records.Claim()
    claim.take(out, overwrite=False, log=print)
    assert not (out / "train.log").exists()
    claim.release()


def test_unreadable_lock_counts_as_stale(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / records.LOCK).write_bytes(b"\xff garbage")
    records.check_free(out, overwrite=False)


# -- section 3: data ---------------------------------------------------------------------------------


def run_on(tmp_path, capsys, d: Path, *extra: str) -> tuple[int, str, Path, dict[str, bytes]]:
    out = tmp_path / "run"
    before = finished_run(out)
    code, err = run_cli(
        capsys, "run", BASELINE, *TINY, "--set", f"data.path={d}", *extra, "--overwrite", "--out", str(out)
    )
    return code, err, out, before


def test_train_token_id_beyond_vocab(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [GOOD, GOOD + [2000]], GOOD)
    code, err, out, before = run_on(tmp_path, capsys, d)
    assert code == 2 and "fineweb_train_000001.bin holds token id 2000" in err and "vocab_size = 1024" in err
    assert snapshot(out) == before


def test_val_token_id_beyond_vocab(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [GOOD], GOOD + [1024])
    code, err, out, before = run_on(tmp_path, capsys, d)
    assert code == 2 and "fineweb_val_000000.bin holds token id 1024" in err
    assert snapshot(out) == before


def test_empty_validation_shard(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [GOOD], [])
    code, err, out, before = run_on(tmp_path, capsys, d)
    assert code == 2 and str(d / "fineweb_val_000000.bin") in err and "hold no tokens" in err
    assert snapshot(out) == before


def test_too_short_validation_shard(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [GOOD], [1, 2, 3])
    code, err, out, before = run_on(tmp_path, capsys, d)
    assert code == 2 and "has 3 tokens" in err and "need at least" in err
    assert snapshot(out) == before


def test_all_train_shards_empty(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [[], []], GOOD)
    code, err, out, before = run_on(tmp_path, capsys, d)
    assert code == 2 and "fineweb_train_000000.bin" in err and "hold no tokens" in err
    assert snapshot(out) == before


def test_truncated_train_shard(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [GOOD], GOOD)
    shard = d / "fineweb_train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    code, err, out, before = run_on(tmp_path, capsys, d)
    assert code == 2 and str(shard) in err and "size mismatch" in err
    assert snapshot(out) == before


def test_garbage_tokenizer(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [GOOD], GOOD, tokenizer=b"\x00\x01garbage" * 10)
    code, err, out, before = run_on(tmp_path, capsys, d)
    assert code == 2 and str(d / "tokenizer.model") in err and "not a valid SentencePiece" in err
    assert snapshot(out) == before


def test_tokenizer_vocab_differs_from_model(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [list(range(1, 500)) * 80], list(range(1, 500)) * 80)
    code, err, out, before = run_on(tmp_path, capsys, d, "--set", "model.vocab_size=512")
    assert code == 2 and "vocab_size = 512" in err and "has 1024 pieces" in err
    assert snapshot(out) == before


def test_missing_data_dir(tmp_path, capsys):
    out = tmp_path / "run"
    before = finished_run(out)
    code, err = run_cli(
        capsys, "run", BASELINE, *TINY, "--set", f"data.path={tmp_path / 'nope'}", "--overwrite", "--out", str(out)
    )
    assert code == 2 and str(tmp_path / "nope") in err and snapshot(out) == before


# -- section 3: pgolf eval ---------------------------------------------------------------------------


def smoke_state_dict(*overrides: str) -> dict[str, torch.Tensor]:
    from pgolf_core.model import resolve_backend
    from pgolf_core.registry import create_manager, load_recipe
    from pgolf_core.run import build_model_with, model_spec

    recipe = load_recipe(BASELINE, list(overrides), smoke=True)
    pm = create_manager(recipe)
    backend, _ = resolve_backend(recipe.model.attention, "cpu")
    return build_model_with(model_spec(recipe, backend), pm, 0).state_dict()


def test_eval_checkpoint_with_other_shapes(tmp_path, capsys, sample):
    ckpt = tmp_path / "other.pt"
    torch.save(smoke_state_dict("model.mlp_mult=4"), ckpt)
    code, err = run_cli(capsys, "eval", BASELINE, "--smoke", "--checkpoint", str(ckpt))
    assert code == 2 and str(ckpt) in err and "tensors have other shapes" in err
    assert "mlp" in err and " vs model (" in err


def test_eval_checkpoint_with_other_keys(tmp_path, capsys, sample):
    weights = smoke_state_dict()
    weights["extra.weight"] = torch.zeros(2)
    ckpt = tmp_path / "keys.pt"
    torch.save(weights, ckpt)
    code, err = run_cli(capsys, "eval", BASELINE, "--smoke", "--checkpoint", str(ckpt))
    assert code == 2 and "unexpected ['extra.weight']" in err


def test_eval_tokenizer_vocab_differs(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [GOOD], list(range(1, 500)) * 80)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"unused: the tokenizer is checked first")
    code, err = run_cli(
        capsys,
        "eval",
        BASELINE,
        "--smoke",
        "--set",
        f"data.path={d}",
        "--set",
        "model.vocab_size=512",
        "--checkpoint",
        str(ckpt),
    )
    assert code == 2 and "has 1024 pieces" in err


def test_eval_token_id_beyond_vocab(tmp_path, capsys, sample):
    d = data_dir(tmp_path, sample, [GOOD], GOOD + [3000])
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"x")
    code, err = run_cli(capsys, "eval", BASELINE, "--smoke", "--set", f"data.path={d}", "--checkpoint", str(ckpt))
    assert code == 2 and "holds token id 3000" in err


def test_eval_garbage_checkpoint(tmp_path, capsys, sample):
    ckpt = tmp_path / "garbage.pt"
    ckpt.write_bytes(b"\x00" * 100)
    code, err = run_cli(capsys, "eval", BASELINE, "--smoke", "--checkpoint", str(ckpt))
    assert code == 2 and str(ckpt) in err


# -- section 3: pgolf data fineweb manifest ----------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "culprit"),
    [
        ([1, 2], "a list of objects under 'datasets', got [1, 2]"),
        ({"datasets": "x", "tokenizers": []}, "a list of objects under 'datasets', got 'x'"),
        (
            {"datasets": [{"name": "fineweb10B_sp1024", "stats": {"files_train": "3", "files_val": 1}}]},
            "files_train = '3'",
        ),
        (
            {"datasets": [{"name": "fineweb10B_sp1024", "stats": {"files_train": 3, "files_val": 1.5}}]},
            "files_val = 1.5",
        ),
        (
            {"datasets": [{"name": "fineweb10B_sp1024", "stats": {"files_train": -1, "files_val": 1}}]},
            "files_train = -1",
        ),
        ({"datasets": [{"name": "fineweb10B_sp1024", "stats": [3, 1]}]}, "files_train = None"),
    ],
)
def test_malformed_fineweb_manifest(tmp_path, capsys, monkeypatch, manifest, culprit):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # nothing may be downloaded
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code, err = run_cli(capsys, "data", "fineweb", "--train-shards", "1", "--out", str(tmp_path))
    assert code == 2 and str(tmp_path / "manifest.json") in err and culprit in err


# -- section 4: faults during a run ------------------------------------------------------------------


def test_write_fault_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "final_model.ptz"
    exporter.write_atomic(path, b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteFault, match=f"could not write {path}: No space left on device"):
        exporter.write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_summary_is_strict_json(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"val_bpb": float("nan"), "sizes": [1.0, float("inf")], "ok": 2.5})
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in summary.json"))
    assert data == {"val_bpb": None, "sizes": [1.0, None], "ok": 2.5, "non_finite": ["val_bpb", "sizes[1]"]}


def test_non_finite_loss_stops_the_run(tmp_path, capsys, monkeypatch, sample):
    """Weights turned NaN after the first optimizer step: step 2's loss is NaN, step 1's is named."""
    import pgolf_core.run as train_mod

    real = train_mod.build_optimizers

    def poisoned(model, *args, **kwargs):
        opt = real(model, *args, **kwargs)
        step = opt.step

        def then_nan() -> None:
            step()
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

        opt.step = then_nan
        return opt

    monkeypatch.setattr(train_mod, "build_optimizers", poisoned)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", BASELINE, *TINY, "--out", str(out))
    assert code == 1 and "training loss became nan at step 2" in err and "at step 1" in err
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary["status"] == "diverged" and summary["steps"] == 2 and summary["last_finite_train_loss"] > 0
    assert "stopping: training loss became nan" in (out / "train.log").read_text()
    assert not (out / records.LOCK).exists() and not (out / "final_model.pt").exists()


def test_disk_full_during_the_run(tmp_path, capsys, monkeypatch, sample):
    import pgolf_core.records as runlog_mod

    real = runlog_mod._append

    def full(path: Path, text: str) -> None:
        if text.startswith("step:1/"):
            raise WriteFault(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        real(path, text)

    monkeypatch.setattr(runlog_mod, "_append", full)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", BASELINE, *TINY, "--out", str(out))
    assert code == 1 and f"could not write {out / 'train.log'}: No space left on device" in err
    assert "model_params:" in (out / "train.log").read_text()  # what was written before is intact
    assert not (out / "summary.json").exists() and not (out / records.LOCK).exists()


def test_ctrl_c_exits_130_without_a_summary(tmp_path, capsys, monkeypatch, sample):
    import pgolf_core.run as train_mod

    def interrupt(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod.records.RunLog, "start_progress", interrupt)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", BASELINE, *TINY, "--out", str(out))
    assert code == 130 and "pgolf: interrupted" in err
    assert not (out / "summary.json").exists() and not (out / records.LOCK).exists()


def test_a_recipe_edited_in_code_with_an_unknown_codec_is_refused_before_training(sample_cache, tmp_path):
    """`load_recipe` checks the codec, but a Python user may change the recipe afterwards: the run's setup
    checks it again, so the error comes before any training and the run directory is never created."""
    from pgolf_core import load_recipe, train
    from pgolf_core.types import RecipeError

    recipe = load_recipe(None, ["train.iterations=1", "train.warmup_steps=0"], smoke=True)
    recipe.export.compressor = "zstdd"
    with pytest.raises(RecipeError, match="zstdd"):
        train(recipe, tmp_path / "run", interactive=False)
    assert not (tmp_path / "run").exists()
