"""benchmarks/gpu_check.py on a machine without a GPU: it imports, `--help` works, it refuses to run
(exit 2, one line), and the overrides it adds are valid for every recipe it runs (the GPU part itself
is checked only where a GPU is at hand)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA device, even on a machine that has one
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_help_works_without_a_gpu():
    r = gpu_check("--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--record-script", "--out", "--steps", "--budget", "--only"):
        assert flag in r.stdout


def test_refuses_without_cuda_in_one_line_with_exit_2(tmp_path):
    out = tmp_path / "out"
    r = gpu_check("--out", str(out), "--steps", "2")
    assert r.returncode == 2, (r.stdout, r.stderr)
    ours = [line for line in r.stderr.splitlines() if line.startswith("gpu_check:")]
    assert len(ours) == 1 and "no CUDA device" in ours[0] and "needs one NVIDIA GPU" in ours[0], r.stderr
    assert r.stderr.strip().splitlines()[-1] == ours[0]
    assert not out.exists()  # nothing written


def test_its_overrides_are_valid_for_every_case():
    from benchmarks import gpu_check as gc
    from pgolf_core import load_recipe

    args = gc.parse_args(["--steps", "10"])
    names = [c.name for c in gc.cases()]
    assert "pr414+depth_recurrence" in names and {p.stem for p in (ROOT / "recipes").glob("*.toml")} <= set(names)
    for case in gc.cases():
        plain = load_recipe(case.recipe, enable=case.enable)
        recipe = load_recipe(case.recipe, gc.overrides_for(plain, args), enable=case.enable)
        assert recipe.train.iterations == 10 and recipe.run.compile == "on" and recipe.run.device == "cuda"
        assert set(plain.enabled_plugins) | set(case.enable) == set(recipe.enabled_plugins)


def test_the_table_has_a_row_per_case_and_the_ratio_line():
    from benchmarks import gpu_check as gc

    row = {"case": "pr414", "status": "ok", "attention": "flash (auto)", "steps": 10, "step_ms_median": 30.0,
           "first_step_ms": 31.0, "explain": [{"graphs": 1, "breaks": 0}], "recompiles_after_warmup": 0,
           "val_bpb": 3.5, "roundtrip_val_bpb": 3.51, "artifact_bytes": 5_000_000, "wall_s": 100.0}  # fmt: skip
    settings = {"steps": 10, "warmup": 2, "batch_seqs": 8, "eval_tokens": 32768, "jobs": 7, "budget": 450}
    report = {"date": "d", "device": "H100", "torch": "t", "cuda": "c", "attention_auto": "a", "settings": settings,
              "elapsed_s": 400.0, "pr414_ratio": {"status": "skipped (no record script)"},
              "cases": [row, {"case": "pr63", "status": "timeout", "problems": ["time box of 300 s reached"]}],
              }  # fmt: skip
    table = gc.markdown(report)
    assert "| pr414 | ok | flash | 10 | 30.0 | 31 | 1g 0b | 0 | 3.5000 | 3.5100 | - | 5,000,000 |" in table
    assert "| pr63 | timeout |" in table and "- pr63: time box of 300 s reached" in table
    assert "#414 step ratio: skipped (no record script)" in table
