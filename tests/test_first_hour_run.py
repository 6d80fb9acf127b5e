"""What a newcomer's run does (issue #26): a recipe this machine cannot hold or finish is refused up front,
runs of one recipe with other toggles get their own folders, an interrupted --overwrite loses nothing, and
the summary and console say what makes a result misleading (tensors exported as zeros, a score worse than
unigram, steps that took ten times the median) and which number is the score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgolf_core import records, run
from pgolf_core.cli import main
from pgolf_core.records import health_warnings
from pgolf_core.registry import load_recipe
from pgolf_core.types import Env

ROOT = Path(__file__).resolve().parents[1]
PR414 = str(ROOT / "recipes" / "pr414.toml")
BASELINE = str(ROOT / "recipes" / "baseline.toml")
GIB = 2**30
CPU = run.torch.device("cpu")


def test_smoke_runs_a_fixed_number_of_steps():
    """A smoke score must not depend on how busy the machine is: fixed steps, no wallclock cap."""
    t = load_recipe(PR414, smoke=True).train
    assert (t.iterations, t.max_wallclock_seconds) == (200, 0.0)


def test_full_size_pr414_needs_more_memory_than_this_kind_of_machine():
    """One process of the full recipe trains micro-batches of 786,432 / 8 = 98,304 tokens: ~33 GiB on a CPU
    (the kernel killed such a run at 24 GB); its smoke form needs under 1 GiB (measured peaks: docs/benchmarks.md)."""
    full, params = run.estimate(load_recipe(PR414), world=1, accum=8, device=CPU)
    smoke, _ = run.estimate(load_recipe(PR414, smoke=True), world=1, accum=1, device=CPU)
    assert 30 * GIB < full < 36 * GIB and smoke < GIB
    assert params == 1024 * 512 + 2 * 11 * 512 * (512 + 256 + 1536)  # the core's matrices (tied embedding)


def _small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096}.get(name, 24 * GIB // 4096))


def test_a_recipe_too_large_for_the_machine_is_refused_before_anything(monkeypatch, tmp_path, capsys):
    _small_machine(monkeypatch)
    out = tmp_path / "run"
    assert main(["run", PR414, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists()
    assert f"{PR414}: this machine cannot run this recipe" in err and "of RAM here" in err
    assert "need about 33.5 GiB per process" in err and "--smoke" in err and "--force" in err


def test_an_absurd_model_size_is_refused_with_the_setting_named(tmp_path, capsys):
    """A typo such as mlp_hidden = 2**40 is refused on any machine, with no _small_machine needed."""
    out = tmp_path / "run"
    assert main(["run", BASELINE, "--smoke", "--set", "model.mlp_hidden=1099511627776", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists() and "mlp_hidden=1099511627776" in err and "GiB" in err


def test_the_time_estimate_refuses_an_hour_of_warm_up_and_force_goes_on(monkeypatch):
    """pr414 on a CPU doing 100 GFLOP/s: 6 x 26.2M params x 786,432 tokens = ~21 min a step, 21 steps ~7.2 h."""
    monkeypatch.setattr(run.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096}.get(name, 2**50 // 4096))
    recipe, cpu = load_recipe(PR414), Env(CPU)
    with pytest.raises(run.PgolfError) as info:
        run.preflight(recipe, cpu, False, print, cpu_flops=1e11)
    step_min = 6 * run.estimate(recipe, 1, 8, CPU)[1] * 786_432 / 1e11 / 60
    assert f"takes about {step_min:,.1f} min on this CPU, so its 20 warm-up steps" in str(info.value)
    assert "--force" in str(info.value)
    lines: list[str] = []
    run.preflight(recipe, cpu, True, lines.append, cpu_flops=1e11)  # forced: said, not refused
    assert len(lines) == 1 and lines[0].startswith("WARNING: --force: ")
    run.preflight(load_recipe(PR414, smoke=True), cpu, False, lines.append, cpu_flops=1e11)
    assert len(lines) == 1  # the smoke form passes silently


def test_default_run_folders_encode_the_command_line():
    def out(**kw: object) -> str:
        return records.default_out(load_recipe(PR414, **kw)).name  # type: ignore[arg-type]

    assert out() == "pr414-seed1337"
    assert out(smoke=True) == "pr414-smoke-seed1337"
    # (swa with ema is refused at load: both choose the final weights)
    assert out(smoke=True, disable=["xsa", "ema"], enable=["swa"]) == "pr414-smoke-with-swa-no-xsa-no-ema-seed1337"
    a, b = out(overrides=["train.iterations=150"]), out(overrides=["train.iterations=151"])
    assert a.startswith("pr414-set-") and a != b and out(overrides=["run.seed=7"]) == "pr414-seed7"


def test_health_warnings():
    assert health_warnings(2.0, 3.0, [], [100.0] * 20) == []
    (unigram, zeroed, slow) = health_warnings(3.3, 3.0, ["a", "b"], [100.0] * 18 + [1500.0, 1200.0])
    assert unigram.startswith("score 3.3000 bpb is worse than the unigram reference 3.0000")
    assert zeroed.startswith("2 tensors exported as all zeros")
    assert slow.startswith("2 steps took over 10x the median step (1500 vs 100 ms)")
    # Too few steps for a median to mean anything (a 3-step smoke run): no verdict on the machine.
    assert health_warnings(2.0, 3.0, [], [100.0] * 2 + [5000.0]) == []


TINY = ["--set", "train.iterations=3", "--set", "train.warmup_steps=0", "--set", "train.val_loss_every=0"]
TINY += ["--set", "eval.max_tokens=4096", "--set", "eval.sliding_stride=0"]


def test_a_barely_trained_pr414_reports_its_zeroed_tensors_and_the_console_marks_the_score(
    sample_cache, tmp_path, capsys
):
    """After 3 steps the record's int6 scale floor rounds every (zero-initialised) output projection to 0:
    the log, the summary and the console say so, and the console ends with the score and the run folder."""
    out = tmp_path / "run"
    assert main(["run", PR414, "--smoke", *TINY, "--out", str(out)]) == 0
    console = capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    proj = [f"blocks.{i}.{m}.proj.weight" for i in range(11) for m in ("attn", "mlp")]
    assert s["status"] == "finished" and sorted(proj) == sorted(set(proj) & set(s["zeroed_tensors"]))
    assert any(w.startswith(f"{len(s['zeroed_tensors'])} tensors exported as all zeros") for w in s["warnings"])
    assert any(w.startswith("score ") and "worse than the unigram reference" in w for w in s["warnings"])
    log = (out / "train.log").read_text()
    assert f"WARNING: export: {len(s['zeroed_tensors'])} tensors quantized to all zeros: " in log
    assert f"{s['roundtrip_val_bpb']:.4f}   (int6_zstd) <- SCORE" in console
    assert f"score_val_bpb {s['score_val_bpb']:.4f} (round trip); run folder {out}" in console
    resolved = (out / "recipe.resolved.toml").read_text()
    assert "# command-line variant: smoke, set-" in resolved


def _finished_run(out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True)
    files = {"summary.json": b'{"val_bpb": 1.5}\n', "train.log": b"step:1/2\n", "final_model.ptz": b"\x00model"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_an_interrupted_overwrite_puts_the_finished_run_back(sample_cache, tmp_path, capsys, monkeypatch):
    import pgolf_core.run as run_mod

    out = tmp_path / "run"
    before = _finished_run(out)

    def interrupt(self: object, clock: object) -> None:
        assert (out / records.SET_ASIDE / "summary.json").exists()  # set aside while the new run trains
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod.Run, "fit", interrupt)
    assert main(["run", BASELINE, "--smoke", *TINY, "--overwrite", "--out", str(out)]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / records.SET_ASIDE).exists()


def test_a_killed_overwrite_is_put_back_at_the_next_start(tmp_path, capsys):
    """A SIGKILL leaves the lock of a dead process, the new run's partial files and the old run set aside."""
    out = tmp_path / "run"
    before = _finished_run(out)
    aside = out / records.SET_ASIDE
    aside.mkdir()
    for name in before:
        (out / name).replace(aside / name)
    (out / "train.log").write_text("half of the new run\n")
    (out / records.LOCK).write_text("999999999 " + records.socket.gethostname())
    assert main(["run", BASELINE, "--smoke", "--out", str(out)]) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != records.LOCK} == before


def test_the_progress_display_counts_every_step_against_iterations_and_shows_evaluation_batches():
    """The bar's total is the log's `iterations`, it moves every step (not only at log steps), and while
    the training clock is stopped the evaluation running now counts its batches."""
    from pgolf_core.records import RunLog

    log = RunLog(None, interactive=True)
    log.start_progress(300, 0.0)
    for step in range(1, 8):
        log.update_progress(step)
    log.update_progress(7, 5.25, 1000.0, 700.0)
    assert log.progress is not None
    train, evals = log.progress.tasks
    assert (train.completed, train.total, train.fields["info"]) == (7, 300, "loss 5.2500  1,000 tok/s")
    assert not evals.visible
    log.eval_phase("validation")
    for _ in range(3):
        log.eval_batch()
    assert (evals.description, evals.completed, evals.visible) == ("validation", 3, True)
    log.eval_phase("final eval")  # a new evaluation starts its count again
    assert (evals.description, evals.completed) == ("final eval", 0)
    log.stop_progress()


def test_each_scored_batch_is_reported_to_the_placement(sample_cache):
    from pgolf_core import evaluation as ev
    from pgolf_core.registry import plugin_parts
    from pgolf_core.run import build, load_data

    recipe = load_recipe(BASELINE, ["eval.max_tokens=4096"], smoke=True)
    batches: list[int] = []
    where = Env(run.torch.device("cpu"), on_batch=lambda: batches.append(1))
    data = load_data(recipe, where, lambda _: None, train=False)
    model, _ = build(recipe, plugin_parts(recipe), where, lambda _: None)
    ev.eval_standard(model, data.val_tokens, data.eval_seq, 16, data.tables, where)
    rows = (data.val_tokens.numel() - 1) // data.eval_seq
    assert len(batches) == -(-rows // 16)  # ceil(rows / 16)
    ev.eval_sliding(model, data.val_tokens, data.eval_seq, 64, 16, data.tables, where)
    windows = len(ev.window_starts(data.val_tokens.numel() - 1, data.eval_seq, 64))
    assert len(batches) == -(-rows // 16) - (-windows // 16)


def test_an_overwrite_that_diverges_puts_the_finished_run_back_and_keeps_its_own_summary(
    sample_cache, tmp_path, capsys, monkeypatch
):
    """A diverged run writes a summary too (status "diverged"): that must not count as the new finished run,
    or the old run set aside would be dropped (found in review: --overwrite then a NaN loss lost both)."""
    import pgolf_core.run as run_mod

    out = tmp_path / "run"
    before = _finished_run(out)

    def diverge(self: run_mod.Run, clock: object) -> None:
        self.stop_if_diverged(1, run_mod.torch.tensor(float("nan")), None)  # what the loop calls on a NaN loss

    monkeypatch.setattr(run_mod.Run, "fit", diverge)
    assert main(["run", BASELINE, "--smoke", *TINY, "--overwrite", "--out", str(out)]) == 1
    assert "training loss became nan at step 1" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "summary.failed.json"} == before
    assert json.loads((out / "summary.failed.json").read_text())["status"] == "diverged"
    assert not (out / records.SET_ASIDE).exists() and records.finished(out)
