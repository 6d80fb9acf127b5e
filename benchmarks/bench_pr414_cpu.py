"""CPU ms/step (forward + backward, fp32, eager) of pgolf's full-size PR #414 model against the record's own GPT.

pgolf's model is `build_model(recipes/pr414.toml)` (core + bigram_hash, smeargate, xsa, partial_rope, ln_scale,
value_embed, ortho_init; 26,993,756 parameters); the record's is the `GPT` class of the script you pass, loaded
at run time (never vendored; see benchmarks/record_script.py), built with the recipe's hyperparameters. The
record's state dict is loaded into pgolf's model with strict key matching, so both compute the same function
on the same batch (checked: the losses agree). Steps alternate between the two so that drifts in machine
load hit both alike; each figure is the median over repeats of the mean ms per step. Target ratio <= 1.02.

    python benchmarks/bench_pr414_cpu.py --record-script PATH/TO/PR414/train_gpt.py [--seq 256] [--write]

`--write` appends a row to docs/benchmarks.md (the table is created on first use).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import load_record, perturb, pr414_record_kwargs  # noqa: E402
from benchmarks.results import append_row  # noqa: E402
from pgolf_core import build_model, load_recipe  # noqa: E402

SECTION = "## Full-size PR #414 model, CPU forward + backward (fp32, eager)"
HEADER = """{section}

`python benchmarks/bench_pr414_cpu.py --record-script PATH/TO/PR414/train_gpt.py --write` appends a row.
pgolf: `build_model(recipes/pr414.toml)`, 26,993,756 parameters; record: the script's `GPT` with the same
hyperparameters, its weights loaded into pgolf's model (strict keys), so both compute the same loss (checked).
FlashAttention-3 is replaced on CPU by SDPA with GQA in the record (pgolf's `sdpa` backend runs the same call).
Steps alternate between the two; each figure is the median over repeats of the mean ms per step
(zero grads, forward, backward). *load avg*: the machine's 1-minute load before/after. Target ratio <= 1.02.

| date | batch | torch | cpu / threads | steps x repeats | load avg | pgolf ms/step | record ms/step | ratio |
|---|---|---|---|---|---|---|---|---|
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record-script", type=Path, required=True, help="a PR #414 train_gpt.py")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="repeats; the median is reported")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="append the result to docs/benchmarks.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    record = load_record(args.record_script, "GPT")
    recipe = load_recipe(ROOT / "recipes" / "pr414.toml", ["model.attention=sdpa", "run.device=cpu"])
    torch.manual_seed(0)
    ref = record.GPT(**pr414_record_kwargs(recipe)).float()
    g = perturb(ref, seed=1)
    model = build_model(recipe)
    model.load_state_dict(ref.state_dict(), strict=True)
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randint(0, recipe.model.vocab_size, (args.batch, args.seq), generator=g)
    y = torch.randint(0, recipe.model.vocab_size, (args.batch, args.seq), generator=g)

    def stepper(net: torch.nn.Module):
        def step() -> torch.Tensor:
            net.zero_grad(set_to_none=True)
            loss = net(x, y)
            loss.backward()
            return loss

        return step

    steps = {"pgolf": stepper(model), "record": stepper(ref)}
    diff = abs(steps["pgolf"]().item() - steps["record"]().item())
    assert diff <= 1e-5, f"pgolf and the record disagree on the loss by {diff}"
    for _ in range(args.warmup):
        steps["pgolf"]()
        steps["record"]()
    times: dict[str, list[float]] = {"pgolf": [], "record": []}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        total = {"pgolf": 0.0, "record": 0.0}
        for s in range(args.steps):
            for name in ("pgolf", "record") if (r + s) % 2 == 0 else ("record", "pgolf"):
                t0 = time.perf_counter()
                steps[name]()
                total[name] += (time.perf_counter() - t0) * 1000
        for name in times:
            times[name].append(total[name] / args.steps)
        print(
            f"repeat {r}: pgolf {times['pgolf'][-1]:.1f} ms/step, record {times['record'][-1]:.1f} ms/step", flush=True
        )
    pg, rf = statistics.median(times["pgolf"]), statistics.median(times["record"])
    result = {
        "date": datetime.date.today().isoformat(),
        "batch": f"{args.batch} x {args.seq}",
        "torch": torch.__version__,
        "cpu": f"{platform.machine()} {os.cpu_count()} cores / {args.threads}",
        "load": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
        "runs": f"{args.steps} x {args.repeats}",
        "pgolf_ms": pg,
        "record_ms": rf,
        "ratio": pg / rf,
        "params": n_params,
        "loss_diff": diff,
    }
    print(f"model      PR #414, {n_params:,} parameters, batch {result['batch']} (loss diff {diff:.2e})")
    print(f"pgolf      {pg:8.1f} ms/step")
    print(f"record     {rf:8.1f} ms/step")
    print(f"ratio      {pg / rf:8.3f}   (load avg {result['load']})")
    if args.write:
        write(result)
    return result


def write(result: dict) -> None:
    r = result
    cells = [r["date"], r["batch"], r["torch"], r["cpu"], r["runs"], r["load"]]
    cells += [f"{r['pgolf_ms']:.1f}", f"{r['record_ms']:.1f}", f"{r['ratio']:.3f}"]
    append_row(SECTION, HEADER.format(section=SECTION), [str(c) for c in cells])


if __name__ == "__main__":
    main()
