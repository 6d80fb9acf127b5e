"""CPU ms/step (forward + backward, fp32, eager) of pgolf's baseline GPT against the plain functional reference.

Both run the same weights on the same batch in the same process; the two are interleaved (alternating which
goes first in each repeat) so that drift in machine load hits both alike, and each figure is the median of the
repeats. The ratio pgolf / reference is the cost of the slots and module structure (target <= 1.02).

    python benchmarks/bench_baseline_cpu.py [--steps 10] [--repeats 11] [--warmup 5] [--threads 2] [--write]

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
from benchmarks import reference_baseline as ref  # noqa: E402
from benchmarks.results import append_row  # noqa: E402
from pgolf_core.model import GPT, ModelSpec  # noqa: E402
from pgolf_core.registry import create_manager  # noqa: E402
from pgolf_core.run import build_model_with  # noqa: E402
from pgolf_core.types import Recipe  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Baseline GPT, CPU forward + backward (fp32, eager)"
HEADER = """{section}

`python benchmarks/bench_baseline_cpu.py --write` appends a row. Config: 9 layers, dim 256, 4 heads, 2 KV heads,
MLP hidden 512, vocab 1024, batch 4 x 256 tokens, tied embeddings; identical random weights for both. Each
figure is the median over repeats of the mean ms per step (zero grads, forward, backward); the two
implementations alternate step by step. *load avg* is the machine's 1-minute load before/after the run.
*reference* is `benchmarks/reference_baseline.py` with `fused=True` (the record script's kernels: `F.rms_norm`,
SDPA with GQA, `F.cross_entropy`; RoPE tables computed once per forward). Target ratio <= 1.02.

| date | config | torch | cpu / threads | steps x repeats | load avg | pgolf ms/step | reference ms/step | ratio |
|---|---|---|---|---|---|---|---|---|
"""
SPEC = ModelSpec(vocab_size=1024, num_layers=9, model_dim=256, num_heads=4, num_kv_heads=2, mlp_hidden=512)
BATCH, SEQ = 4, 256


def build(seed: int = 0) -> tuple[GPT, dict[str, torch.Tensor]]:
    model = build_model_with(SPEC, create_manager(Recipe()), seed)  # the baseline's parts (the defaults plugin)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero projections and off-default controls, as after some training
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.state_dict().items()}
    return model, params


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=11, help="repeats; the median is reported")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps of each implementation first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help=f"append the result to {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, params = build()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, SPEC.vocab_size, (BATCH, SEQ), generator=g)
    y = torch.randint(0, SPEC.vocab_size, (BATCH, SEQ), generator=g)

    def step_pgolf() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        return loss

    def step_ref() -> torch.Tensor:
        for p in params.values():
            p.grad = None
        loss = ref.loss(params, x, y, fused=True)
        loss.backward()
        return loss

    diff = abs(step_pgolf().item() - step_ref().item())
    assert diff <= 1e-5, f"pgolf and the reference disagree on the loss by {diff}"
    for _ in range(args.warmup):
        step_pgolf()
        step_ref()

    # Interleaved step by step (A B B A A B ...), each step timed on its own: neighbouring steps see the same
    # machine load, which matters on a shared machine. A repeat's figure is the mean of its `steps` steps.
    times: dict[str, list[float]] = {"pgolf": [], "reference": []}
    pair_ratios: list[float] = []
    load_before = os.getloadavg()[0]
    steps = {"pgolf": step_pgolf, "reference": step_ref}
    for r in range(args.repeats):
        total = {"pgolf": 0.0, "reference": 0.0}
        for s in range(args.steps):
            pair = {}
            for name in ("pgolf", "reference") if (r + s) % 2 == 0 else ("reference", "pgolf"):
                t0 = time.perf_counter()
                steps[name]()
                pair[name] = (time.perf_counter() - t0) * 1000
                total[name] += pair[name]
            pair_ratios.append(pair["pgolf"] / pair["reference"])
        for name in times:
            times[name].append(total[name] / args.steps)
    load = f"{load_before:.1f}/{os.getloadavg()[0]:.1f}"
    pg, rf = statistics.median(times["pgolf"]), statistics.median(times["reference"])
    q = statistics.quantiles(pair_ratios, n=4) if len(pair_ratios) > 1 else pair_ratios * 3
    result = {
        "date": datetime.date.today().isoformat(),
        "config": f"L{SPEC.num_layers} d{SPEC.model_dim} h{SPEC.num_heads}/{SPEC.num_kv_heads} "
        f"mlp{SPEC.mlp_hidden} V{SPEC.vocab_size} B{BATCH} T{SEQ}",
        "torch": torch.__version__,
        "cpu": f"{platform.machine()} {os.cpu_count()} cores / {args.threads}",
        "load": load,
        "runs": f"{args.steps} x {args.repeats}",
        "pgolf_ms": pg,
        "ref_ms": rf,
        "ratio": pg / rf,
    }
    print(f"config     {result['config']}  (torch {result['torch']}, {result['cpu']} threads)")
    print(f"pgolf      {pg:8.2f} ms/step   (min {min(times['pgolf']):.2f}, max {max(times['pgolf']):.2f})")
    print(f"reference  {rf:8.2f} ms/step   (min {min(times['reference']):.2f}, max {max(times['reference']):.2f})")
    print(f"ratio      {pg / rf:8.3f}   (step-pair ratios: median {q[1]:.3f}, quartiles {q[0]:.3f} .. {q[2]:.3f})")
    print(f"load avg   {load} (1-min, before/after; above the core count the figures are noisy)")
    if args.write:
        write(result)
    return result


def write(result: dict) -> None:
    r = result
    cells = [r["date"], r["config"], r["torch"], r["cpu"], r["runs"], r["load"]]
    cells += [f"{r['pgolf_ms']:.2f}", f"{r['ref_ms']:.2f}", f"{r['ratio']:.3f}"]
    append_row(SECTION, HEADER.format(section=SECTION), [str(c) for c in cells])


if __name__ == "__main__":
    main()
