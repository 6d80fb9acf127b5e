"""`pgolf ablate`: statistics against direct computation and scipy, the plan (variants, requires /
conflicts skips, a changed restart refused), resume after SIGKILL without duplicates, submitit."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from pgolf_core.ablate import plan, stats
from pgolf_core.cli import main

A = [1.20, 1.23, 1.21, 1.25]
B = [1.26, 1.24, 1.29]


def test_stats_direct_computation():
    assert stats.mean(A) == pytest.approx(4.89 / 4, abs=1e-15)
    m = sum(A) / 4
    assert stats.std(A) == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in A) / 3), abs=1e-15)
    va, vb = stats.std(A) ** 2 / 4, stats.std(B) ** 2 / 3
    w = stats.welch(A, B, alpha=0.01)
    assert w["se"] == pytest.approx(math.sqrt(va + vb), rel=1e-12)
    assert w["t"] == pytest.approx((stats.mean(B) - stats.mean(A)) / math.sqrt(va + vb), rel=1e-12)
    assert w["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2), rel=1e-12)
    # closed forms: t with 1 df is Cauchy, with 2 df F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert stats.t_ppf(0.99, 1) == pytest.approx(math.tan(math.pi * 0.49), rel=1e-9)
    q = stats.t_ppf(0.975, 2)
    assert q == pytest.approx(4.302652729911275, rel=1e-9)
    p = 0.975
    assert q == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert w["min_detectable"] == pytest.approx(
        (stats.t_ppf(0.99, w["df"]) + stats.t_ppf(0.8, w["df"])) * w["se"], rel=1e-12
    )
    assert stats.welch([1.0], B)["p"] is None  # one seed: no spread, no p


def test_stats_match_scipy():
    sst = pytest.importorskip("scipy.stats", reason="scipy not installed (optional extra `ablate`)")
    for t, df in ((1.3, 3.7), (-2.2, 1.5), (0.2, 40.0), (4.0, 7.0)):
        assert stats.t_cdf(t, df) == pytest.approx(sst.t.cdf(t, df), abs=1e-12)
    for q, df in ((0.99, 2.5), (0.8, 3.0), (0.995, 12.0)):
        assert stats.t_ppf(q, df) == pytest.approx(sst.t.ppf(q, df), rel=1e-9)
    w = stats.welch(A, B)
    ref = sst.ttest_ind(B, A, equal_var=False, alternative="greater")
    assert w["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert w["p"] == pytest.approx(ref.pvalue, rel=1e-9)


def _args(tmp_path: Path, recipe: Path, **kw) -> Namespace:
    base = dict(
        recipe=str(recipe),
        overrides=[],
        smoke=True,
        plugins_dir=[],
        only=None,
        grid=[],
        add_one_in=False,
        base=None,
        order=None,
        seeds=1,
        seed_list=None,
        fixed_steps=2,
        out=str(tmp_path / "abl"),
    )
    base.update(kw)
    return Namespace(**base)


def _recipe(tmp_path: Path) -> Path:
    r = tmp_path / "r.toml"
    r.write_text("[plugins.ema]\ndecay = 0.9\n[plugins.swa]\nenabled = false\n[plugins.xsa]\nlast_n = 1\n")
    return r


def test_plan_modes_and_conflicts(tmp_path):
    r = _recipe(tmp_path)
    loo = plan.build_variants(_args(tmp_path, r))
    assert [(v.name, v.disable, v.skipped) for v in loo] == [
        ("full", [], None),
        ("-xsa", ["xsa"], None),
        ("-ema", ["ema"], None),
    ]  # hook order: xsa (50) before ema (80)
    aoi = plan.build_variants(_args(tmp_path, r, add_one_in=True, order="ema,swa"))
    assert [v.name for v in aoi] == ["base", "+ema", "full"]
    assert aoi[2].enable == ["swa"] and aoi[2].skipped == "ema conflicts with swa (both enabled)"
    assert plan.check_constraints(["swa", "ema"], "r") == "ema conflicts with swa (both enabled)"
    grid = plan.build_variants(_args(tmp_path, r, grid=["plugins.ema.decay=0.9,0.95"]))
    assert [v.sets for v in grid] == [["plugins.ema.decay=0.9"], ["plugins.ema.decay=0.95"]]
    p = plan.make_plan(_args(tmp_path, r, add_one_in=True, order="ema,swa", seed_list="3,4"))
    assert p["skipped"] == {"full": "ema conflicts with swa (both enabled)"}
    assert len(p["runs"]) == 4 and p["compare"] == "equal steps"
    assert p["runs"][0]["args"] == [
        "run",
        str(r),
        "--smoke",
        "--set",
        "train.iterations=2",
        "--set",
        "train.max_wallclock_seconds=0",
        "--set",
        "run.seed=3",
        "--disable",
        "ema",
        "--disable",
        "xsa",
        "--out",
        str(tmp_path / "abl" / "base" / "seed3"),
    ]


FAST = ["--smoke", "--fixed-steps", "2", "--set", "eval.max_tokens=2048", "--set", "train.warmup_steps=0"]


def _ablate_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pgolf",
        "ablate",
        "recipes/baseline.toml",
        *FAST,
        "--seeds",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def test_restart_with_other_arguments_refused(tmp_path, capsys):
    out = tmp_path / "abl"
    a = Namespace(**{**vars(_args(tmp_path, Path("recipes/baseline.toml"))), "seeds": 2, "out": str(out)})
    plan.write_or_check(plan.make_plan(a), out)
    rc = main(["ablate", "recipes/baseline.toml", *FAST[:3], "--seeds", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "seeds: stored [1337, 1338], now [1337, 1338, 1339]" in err
    assert not (out / "full").exists()  # nothing ran


def _done_runs(out: Path) -> list[tuple[str, int]]:
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.endswith("}")]
    return sorted((e["variant"], e["seed"]) for e in events if e["event"] == "done")


@pytest.mark.slow  # tens of seconds of subprocess runs; .ci/run runs the slow tests
def test_sigkill_and_resume_runs_each_once(tmp_path):
    out = tmp_path / "abl"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        _ablate_cmd(out), cwd=root, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # kill at a random point: after the plan is written, before the whole ablation ends
    deadline = random.uniform(0.5, 1.5)
    while not (out / "plan.json").exists() and proc.poll() is None:
        time.sleep(0.05)
    first_done = None
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 600:
        if first_done is None and (out / "full" / "seed1337" / "summary.json").exists():
            first_done = time.time() - t0
        if first_done is not None and time.time() - t0 > first_done * deadline:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [s for s in (1337, 1338) if (out / "full" / f"seed{s}" / "summary.json").exists()]
    r = subprocess.run(_ablate_cmd(out), cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _done_runs(out) == [("full", 1337), ("full", 1338)]  # every run finished exactly once
    for s in (1337, 1338):
        assert (out / "full" / f"seed{s}" / "summary.json").exists()
    starts = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    for s in done_before:  # finished before the kill: skipped, never started again
        assert f"full/seed{s} finished before, skipped" in r.stderr
        assert sum(e["event"] == "start" and e["seed"] == s for e in starts) == 1
    rep = json.loads((out / "ablation.json").read_text())
    assert rep["compare"] == "equal steps" and rep["rows"][0]["n"] == 2 and rep["rows"][0]["steps"] == 2
    assert "equal steps" in (out / "ablation.md").read_text()


@pytest.mark.slow  # tens of seconds of subprocess runs; .ci/run runs the slow tests
def test_submitit_local_executor_runs_two_variants(tmp_path):
    pytest.importorskip("submitit", reason="submitit not installed (optional extra `ablate`)")
    out = tmp_path / "abl"
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "pgolf",
        "ablate",
        str(_recipe_min(tmp_path)),
        *FAST,
        "--out",
        str(out),
        "--executor",
        "submitit-local",
        "--no-png",
    ]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _done_runs(out) == [("-int6_export", 1337), ("full", 1337)]
    rep = json.loads((out / "ablation.json").read_text())
    assert [row["variant"] for row in rep["rows"]] == ["full", "-int6_export"]
    assert rep["rows"][1]["delta_bytes"] != 0  # int6 vs int8: the artifact differs


def _recipe_min(tmp_path: Path) -> Path:
    r = tmp_path / "z.toml"
    r.write_text("[plugins.int6_export]\n")
    return r
