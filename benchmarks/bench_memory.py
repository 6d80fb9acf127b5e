"""Peak memory of a real CPU run against the preflight's estimate (`pgolf_core.run.estimate`).

Each configuration runs `pgolf_core.train` for one step (no warm-up, a short final eval) in a fresh
process, which reports its peak resident set size (`ru_maxrss`): the model, optimizers, EMA, data,
one training micro-batch, the final evals and the export all count, as in a real run. The full-size
PR #414 model is measured at micro-batches that fit this machine; the estimate's error there is
what makes its figure for the record's own micro-batch (98,304 tokens on one process) credible.

    python benchmarks/bench_memory.py [--write]

`--write` replaces the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pgolf_core import load_recipe
from pgolf_core.recipe import grad_accum_steps
from pgolf_core.run import estimate

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Preflight memory estimate vs measured peak (CPU, one training step + final evals)"

# (label, smoke, overrides): the smoke shape as `pgolf run --smoke` runs it, then the full pr414 model at
# growing micro-batches (one sequence of 2,048 tokens and up; accumulation 1, eval batches of the same size).
FULL = ["train.warmup_steps=0", "train.grad_accum_steps=1", "eval.max_tokens=16384", "eval.sliding_stride=1024"]
CONFIGS = [
    ("pr414 --smoke", True, []),
    *[
        (f"pr414 full, micro-batch {n:,}", False, [f"train.train_batch_tokens={n}", f"eval.batch_tokens={n}", *FULL])
        for n in (2048, 4096)
    ],
]
CHILD = """
import json, resource, sys, tempfile
from pgolf_core import load_recipe, train
sets = sys.argv[3:] + ["train.iterations=1", "train.val_loss_every=0"]
recipe = load_recipe(sys.argv[1], sets, smoke=sys.argv[2] == "1")
with tempfile.TemporaryDirectory() as out:
    train(recipe, out, force=True, interactive=False)
print("RESULT", json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def measure(smoke: bool, overrides: list[str]) -> dict[str, int]:
    recipe = str(ROOT / "recipes" / "pr414.toml")
    with tempfile.TemporaryDirectory() as cache:
        env = {"PGOLF_CACHE": cache, "PATH": "/usr/bin:/bin"}
        cmd = [sys.executable, "-c", CHILD, recipe, "1" if smoke else "0", *overrides]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"run failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = ["| configuration | estimate GiB | measured peak GiB | estimate / measured |", "|---|---:|---:|---:|"]
    for label, smoke, overrides in CONFIGS:
        recipe = load_recipe(ROOT / "recipes" / "pr414.toml", overrides, smoke=smoke)
        est = estimate(recipe, 1, grad_accum_steps(recipe.train, 1, ""), torch.device("cpu"))[0] / 2**30
        peak = measure(smoke, overrides)["peak"] / 2**30
        rows.append(f"| {label} | {est:.2f} | {peak:.2f} | {est / peak:.2f} |")
        print(rows[-1], flush=True)
    if args.write:
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
        before = text.split(SECTION)[0].rstrip()
        after = text.split(SECTION)[1].split("\n## ", 1)[1:] if SECTION in text else []
        body = (
            f"{SECTION}\n\n`python benchmarks/bench_memory.py --write` ({platform.processor() or 'cpu'}, "
            f"{platform.python_version()}). The preflight refuses a run whose estimate exceeds this machine's "
            "memory (`--force` runs it anyway).\n\n" + "\n".join(rows) + "\n"
        )
        DOC.write_text(before + "\n\n" + body + ("\n## " + after[0] if after else ""))


if __name__ == "__main__":
    main()
