"""`pgolf ablate`: statistics against direct computation and scipy (two-sided), the plan (variant names,
requires / conflicts skips, too few smoke steps refused, a changed restart refused, more seeds added), the
report (direction, zeroed tensors, the PNG), resume after SIGKILL without duplicates, submitit."""

from __future__ import annotations

import csv
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
from scipy import stats as sst  # the `dev` extra's cross-check; `pgolf ablate` itself does not need scipy

from pgolf_core.ablate import plan, stats
from pgolf_core.cli import main
from pgolf_core.registry import load_recipe
from pgolf_core.types import PgolfError

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
    # closed forms of P(|T| >= |t|): t with 1 df is Cauchy, 1 - 2 atan|t| / pi; with 2 df, 1 - |t| / sqrt(2 + t^2)
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert stats.t_tails(t, 1) == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, abs=1e-12)
        assert stats.t_tails(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), abs=1e-12)
    assert w["p"] == pytest.approx(stats.t_tails(w["t"], w["df"]), rel=1e-15)  # two-sided: both tails
    assert stats.welch(B, A, alpha=0.01)["p"] == pytest.approx(w["p"], rel=1e-12)  # and symmetric in direction
    assert stats.t_ppf(0.99, 1) == pytest.approx(math.tan(math.pi * 0.49), rel=1e-9)
    assert stats.t_ppf(0.01, 1) == pytest.approx(-math.tan(math.pi * 0.49), rel=1e-9)
    q = stats.t_ppf(0.975, 2)
    assert q == pytest.approx(4.302652729911275, rel=1e-9)
    p = 0.975
    assert q == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert w["min_detectable"] == pytest.approx(  # two-sided at alpha = 0.01: t_{0.995}
        (stats.t_ppf(0.995, w["df"]) + stats.t_ppf(0.8, w["df"])) * w["se"], rel=1e-12
    )
    assert stats.welch([1.0], B)["p"] is None  # one seed: no spread, no p


def test_stats_match_scipy():
    for t, df in ((1.3, 3.7), (-2.2, 1.5), (0.2, 40.0), (4.0, 7.0), (-30.0, 1.0), (12.0, 200.0)):
        assert stats.t_tails(t, df) == pytest.approx(2 * sst.t.sf(abs(t), df), rel=1e-12, abs=1e-15)
    for q, df in ((0.99, 2.5), (0.8, 3.0), (0.995, 12.0), (0.2, 4.0), (0.9995, 1.0)):
        assert stats.t_ppf(q, df) == pytest.approx(sst.t.ppf(q, df), rel=1e-9)
    w = stats.welch(A, B, alpha=0.01)
    ref = sst.ttest_ind(B, A, equal_var=False)  # two-sided, the default
    assert (w["t"], w["df"], w["p"]) == pytest.approx((ref.statistic, ref.df, ref.pvalue), rel=1e-12)
    # the values themselves (scipy 1.17.1), so a scipy change cannot move both sides at once
    assert (w["delta"], w["t"], w["df"], w["p"]) == pytest.approx(
        (0.0408333333333335, 2.234207687679018, 4.0839702741346136, 0.08781022220940905), rel=1e-12
    )
    md = (sst.t.ppf(0.995, w["df"]) + sst.t.ppf(0.8, w["df"])) * w["se"]
    assert w["min_detectable"] == pytest.approx(md, rel=1e-9) and md == pytest.approx(0.1001331684246403, rel=1e-12)


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
        allow_few_steps=True,
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
    recipe = load_recipe(r, smoke=True)
    loo = plan.build_variants(_args(tmp_path, r), recipe)
    assert [(v.name, v.disable, v.skipped) for v in loo] == [
        ("full", [], None),
        ("no-xsa", ["xsa"], None),
        ("no-ema", ["ema"], None),
    ]  # hook order: xsa (50) before ema (80); `pgolf run`'s folder words, never a leading `-`
    aoi = plan.build_variants(_args(tmp_path, r, add_one_in=True, order="xsa,ema,swa"), recipe)
    assert [v.name for v in aoi] == ["base", "with-xsa", "with-xsa-with-ema", "full"]
    assert aoi[3].enable == ["swa"] and aoi[3].skipped == "ema conflicts with swa (both enabled)"
    assert plan.check_constraints(["swa", "ema"], "r") == "ema conflicts with swa (both enabled)"
    grid = plan.build_variants(_args(tmp_path, r, grid=["plugins.ema.decay=0.9,0.95"]), recipe)
    assert [(v.name, v.sets) for v in grid] == [
        ("plugins.ema.decay=0.9", ["plugins.ema.decay=0.9"]),
        ("plugins.ema.decay=0.95", ["plugins.ema.decay=0.95"]),
    ]
    with pytest.raises(PgolfError, match="--grid -x=1: expected KEY=V1,V2"):  # `--grid=-x=1` would name a `-x=1/`
        plan.build_variants(_args(tmp_path, r, grid=["-x=1"]), recipe)
    p = plan.make_plan(_args(tmp_path, r, add_one_in=True, order="ema,swa", seed_list="4,3,4"))
    assert p["skipped"] == {"full": "ema conflicts with swa (both enabled)"}
    assert p["seeds"] == [3, 4] and p["recipe"] == str(r)  # sorted, each once: a repeat would share a folder
    assert len(p["runs"]) == 4 and p["compare"] == "equal steps (2)"
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


FAST = [
    "--smoke",
    "--fixed-steps",
    "2",
    "--allow-few-steps",
    "--set",
    "eval.max_tokens=2048",
    "--set",
    "train.warmup_steps=0",
]


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
    rc = main(["ablate", "recipes/baseline.toml", *FAST[:4], "--fixed-steps", "3", "--seeds", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "compare: stored 'equal steps (2)', now 'equal steps (3)'" in err
    rc = main(["ablate", "recipes/baseline.toml", *FAST[:4], "--seed-list", "1337,1339", "--out", str(out)])
    assert rc == 2 and "seeds: stored [1337, 1338], now [1337, 1339]" in capsys.readouterr().err  # 1338 dropped
    assert not (out / "full").exists()  # nothing ran


def test_more_seeds_extend_the_stored_plan(tmp_path, capsys):
    out = tmp_path / "abl"
    a = _args(tmp_path, _recipe(tmp_path), only="xsa", seeds=2, out=str(out))
    two = plan.make_plan(a)
    plan.write_or_check(two, out)
    three = plan.make_plan(Namespace(**{**vars(a), "seeds": 3}))
    plan.write_or_check(three, out)
    assert "ablate: adding seeds [1339] to" in capsys.readouterr().err
    stored = json.loads((out / "plan.json").read_text())
    assert stored == three and [r for r in three["runs"] if r["seed"] != 1339] == two["runs"]
    assert [(r["variant"], r["seed"]) for r in stored["runs"]] == [
        (v, s) for v in ("full", "no-xsa") for s in (1337, 1338, 1339)
    ]


def test_smoke_steps_that_zero_the_blocks_refused(tmp_path, capsys):
    out = tmp_path / "abl"
    rc = main(["ablate", "recipes/pr414.toml", "--smoke", "--fixed-steps", "20", "--only", "xsa", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"--fixed-steps 20: below {plan.MIN_SMOKE_STEPS} steps" in err and "all zeros" in err
    assert f"use --fixed-steps {plan.MIN_SMOKE_STEPS} or more (--allow-few-steps runs it anyway)" in err
    assert not out.exists()  # refused before anything was written
    set_20 = ["--set", "train.iterations=20"]
    assert main(["ablate", "recipes/pr414.toml", "--smoke", *set_20, "--only", "xsa", "--out", str(out)]) == 2
    assert "--smoke with train.iterations=20: below" in capsys.readouterr().err
    a = _args(tmp_path, Path("recipes/pr414.toml"), only="xsa", fixed_steps=plan.MIN_SMOKE_STEPS, allow_few_steps=False)
    assert plan.make_plan(a)["compare"] == f"equal steps ({plan.MIN_SMOKE_STEPS})"
    assert (
        plan.make_plan(_args(tmp_path, Path("recipes/pr414.toml"), fixed_steps=None, allow_few_steps=False))["compare"]
        == "equal steps (200)"
    )  # --smoke alone: its own fixed step count
    full = _args(tmp_path, Path("recipes/pr414.toml"), smoke=False, fixed_steps=None, allow_few_steps=False)
    assert plan.make_plan(full)["compare"] == "equal wall time (600 s)"


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
    assert rep["compare"] == "equal steps (2)" and rep["rows"][0]["n"] == 2 and rep["rows"][0]["steps"] == 2
    assert "equal steps (2)" in (out / "ablation.md").read_text()


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
    assert _done_runs(out) == [("full", 1337), ("no-int6_export", 1337)]
    rep = json.loads((out / "ablation.json").read_text())
    assert [row["variant"] for row in rep["rows"]] == ["full", "no-int6_export"]
    assert rep["rows"][1]["delta_bytes"] != 0  # int6 vs int8: the artifact differs


def _recipe_min(tmp_path: Path) -> Path:
    r = tmp_path / "z.toml"
    r.write_text("[plugins.int6_export]\n")
    return r


FULL, WORSE, BETTER = [3.30, 3.31, 3.32], [3.40, 3.42, 3.41], [3.27, 3.28, 3.285]


def _summary(bpb: float, zeroed: list[str] | None) -> dict:
    """The fields of a run's summary.json that the report reads (`zeroed_tensors` absent: a run from before it)."""
    s = {"score_val_bpb": bpb, "artifact_bytes": 1000, "step_ms": 10.0, "steps": 50, "eval_seconds": 1.0}
    s["manifest"] = {"data": {"val_bytes_per_token": 2.4}}  # the challenge's 0.005 nats: 0.0030 bpb
    return s if zeroed is None else {**s, "zeroed_tensors": zeroed}


def test_report_two_sided_direction_and_zeroed_tensors(tmp_path, capsys):
    out = tmp_path / "abl"
    p = plan.make_plan(_args(tmp_path, _recipe(tmp_path), seeds=3, out=str(out)))
    plan.write_or_check(p, out)
    values = {"full": (FULL, [[]] * 3), "no-xsa": (WORSE, [["b.0.attn.proj"], [], ["b.0.mlp.proj"]])}
    values["no-ema"] = (BETTER, [None] * 3)
    for r in p["runs"]:
        bpb, zeroed = values[r["variant"]]
        i = r["seed"] - 1337
        d = Path(r["args"][-1])
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(_summary(bpb[i], zeroed[i])))
    assert main(["ablate", "--report", str(out)]) == 0
    assert "wrote ablation.json, ablation.csv, ablation.md, ablation.png" in capsys.readouterr().err
    rows = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())["rows"]}
    for name, bpb in (("no-xsa", WORSE), ("no-ema", BETTER)):
        ref = sst.ttest_ind(bpb, FULL, equal_var=False)
        assert rows[name]["delta"] == pytest.approx(sum(bpb) / 3 - sum(FULL) / 3, rel=1e-12)
        assert rows[name]["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        md = (sst.t.ppf(0.975, ref.df) + sst.t.ppf(0.8, ref.df)) * rows[name]["delta_se"]
        assert rows[name]["min_detectable_alpha"] == pytest.approx(md, rel=1e-9)  # the same two-sided test
    # removing EMA helps by 0.03: a one-sided "worse" test gave p = 0.99 and greyed it out; now it is flagged
    assert rows["no-ema"]["delta"] == pytest.approx(-0.0316666666666667, rel=1e-12) and rows["no-ema"]["p"] < 0.05
    assert (rows["no-xsa"]["verdict"], rows["no-ema"]["verdict"]) == ("variant worse", "variant better")
    assert [rows[v]["zeroed_tensors"] for v in ("full", "no-xsa", "no-ema")] == [0, 2, None]  # None: not recorded
    md_text = (out / "ablation.md").read_text()
    assert "lower val_bpb is better" in md_text and "two-sided Welch" in md_text
    assert "| no-xsa | 3 | 3.4100 ± 0.0100 | +0.1000 ✓ | " in md_text  # clears 0.0030 bpb at p < 0.01
    assert "| no-ema | 3 | 3.2783 ± 0.0076 | -0.0317 | 0.014 |" in md_text  # p > 0.01: no ✓
    no_ema = next(line for line in md_text.splitlines() if line.startswith("| no-ema "))
    assert "| variant better |" in no_ema and no_ema.split(" | ")[8] == "?"
    assert "| variant worse |" in md_text and "| ⚠ 2 |" in md_text
    assert (
        "⚠ tensors exported as all zeros (no-xsa 2): the scored model lacks them, so Δ cannot show what acts in "
        f"them; raise --fixed-steps (--smoke: at least {plan.MIN_SMOKE_STEPS})." in md_text
    )
    with open(out / "ablation.csv") as f:
        table = {row["variant"]: row for row in csv.DictReader(f)}
    assert (table["no-xsa"]["zeroed_tensors"], table["no-xsa"]["verdict"]) == ("2", "variant worse")
    assert table["full"]["compare"] == "equal steps (2)"
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # two real runs of ~10 s each; .ci/run runs the slow tests
def test_more_seeds_run_only_the_new_runs(sample_cache, tmp_path, capsys):
    out = tmp_path / "abl"
    one_variant = [str(_recipe_min(tmp_path)), *FAST, "--grid", "train.warmup_steps=0", "--no-png", "--out", str(out)]
    assert main(["ablate", *one_variant, "--seeds", "1"]) == 0
    first = out / "train.warmup_steps=0" / "seed1337" / "summary.json"
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["ablate", *one_variant, "--seeds", "2"]) == 0
    err = capsys.readouterr().err
    assert "ablate: adding seeds [1338] to" in err and "train.warmup_steps=0/seed1337 finished before, skipped" in err
    assert first.stat().st_mtime_ns == stamp  # the finished run was not redone
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["seed"]) for e in events] == [
        ("start", 1337),
        ("done", 1337),
        ("start", 1338),
        ("done", 1338),
    ]
    assert (out / "logs" / "train.warmup_steps=0-seed1338.log").exists()
    row = json.loads((out / "ablation.json").read_text())["rows"][0]
    assert (row["n"], row["steps"]) == (2, 2)
    # 2 steps after a zero init: the smoke model's int6 export rounds every attn.proj and mlp.proj to zeros
    zeroed = json.loads(first.read_text())["zeroed_tensors"]
    assert row["zeroed_tensors"] == len(zeroed) == 18 and all(
        n.endswith(("attn.proj.weight", "mlp.proj.weight")) for n in zeroed
    )
    assert "⚠ tensors exported as all zeros (train.warmup_steps=0 18)" in (out / "ablation.md").read_text()
