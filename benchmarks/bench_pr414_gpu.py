"""GPU ms/step (forward + backward, bf16 autocast, `torch.compile`) of pgolf's PR #414 model against the record's.

Both models are set up the way their training runs set them up on CUDA: the record's `GPT` (the script you
pass, loaded at run time; FlashAttention-3 replaced by SDPA where it is not installed) as its `main()` does
(bf16 model, fp32 `CastedLinear` weights and control tensors, `torch.compile(dynamic=False, fullgraph=True)`),
pgolf's as `pgolf_core.run` does (`apply_training_precision`, the same compile call, attention backend
`flash` where FA3 is installed, else `sdpa`, so both run the same kernel).
The record's weights are loaded into pgolf's model (strict keys), so the
two compute the same function (the losses are checked). Steps alternate between the two; each figure is the
median over repeats of the mean ms per step, timed with `torch.cuda.synchronize`. Target ratio <= 1.02.

    python benchmarks/bench_pr414_gpu.py --record-script PATH/TO/PR414/train_gpt.py [--batch 48] [--json PATH]
        [--disable late_qat]

The default batch, 48 x 2048 tokens, is one H100's share of the record's 786,432-token step on 8 GPUs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import (  # noqa: E402
    as_the_record_trains_on_cuda,
    load_record,
    perturb,
    pr414_record_kwargs,
)
from pgolf_core import build_model, load_recipe  # noqa: E402
from pgolf_core.model import apply_training_precision  # noqa: E402
from pgolf_core.types import collect_roles  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record-script", type=Path, required=True, help="a PR #414 train_gpt.py")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3, help="untimed (compiling) steps of each model first")
    ap.add_argument("--disable", action="append", default=[], help="a pgolf plugin to leave out (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print each model's top N CUDA kernels")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_pr414_gpu needs CUDA (benchmarks/bench_pr414_cpu.py is the CPU one)")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    record = load_record(args.record_script, "GPT")
    # The record calls FA3 when installed, else the SDPA stand-in: pgolf runs the same kernel.
    attention = "flash" if importlib.util.find_spec("flash_attn_interface") else "sdpa"
    recipe = load_recipe(ROOT / "recipes" / "pr414.toml", [f"model.attention={attention}"], disable=args.disable)
    torch.manual_seed(0)
    ref = record.GPT(**pr414_record_kwargs(recipe))
    g = perturb(ref, seed=1)
    model = build_model(recipe)
    model.load_state_dict(ref.state_dict(), strict=True)
    ref = as_the_record_trains_on_cuda(record, ref.to(device))
    model = model.to(device)
    apply_training_precision(model, collect_roles(model))  # as a run casts it
    x = torch.randint(0, recipe.model.vocab_size, (args.batch, args.seq), generator=g).to(device)
    y = torch.randint(0, recipe.model.vocab_size, (args.batch, args.seq), generator=g).to(device)

    def stepper(net: torch.nn.Module):
        compiled = torch.compile(net, dynamic=False, fullgraph=True)

        def step() -> torch.Tensor:
            net.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                loss = compiled(x, y)
            loss.backward()
            return loss

        return step

    steps = {"pgolf": stepper(model), "record": stepper(ref)}
    t0 = time.perf_counter()
    losses = {name: steps[name]().item() for name in steps}
    print(f"compiled both in {time.perf_counter() - t0:.0f} s; losses {losses}", flush=True)
    diff = abs(losses["pgolf"] - losses["record"])
    assert diff <= 2e-2, f"pgolf and the record disagree on the loss by {diff} (bf16)"
    for _ in range(args.warmup):
        steps["pgolf"]()
        steps["record"]()
    times: dict[str, list[float]] = {"pgolf": [], "record": []}
    for r in range(args.repeats):
        for name in ("pgolf", "record") if r % 2 == 0 else ("record", "pgolf"):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1000 / args.steps)
        print(f"repeat {r}: pgolf {times['pgolf'][-1]:.2f} ms/step, record {times['record'][-1]:.2f}", flush=True)
    if args.profile:
        for name in steps:
            print_kernel_profile(name, steps[name], args.profile)
    pg, rf = statistics.median(times["pgolf"]), statistics.median(times["record"])
    result = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "batch": f"{args.batch} x {args.seq}",
        "runs": f"{args.steps} x {args.repeats}",
        "pgolf_ms": pg,
        "record_ms": rf,
        "ratio": pg / rf,
        "loss_diff": diff,
        "pgolf_disabled": args.disable,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    print(json.dumps(result, indent=1))
    print(f"ratio pgolf / record: {pg / rf:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result) + "\n")
    return result


def print_kernel_profile(name: str, step, top: int, steps: int = 5) -> None:
    """CUDA time per step by kernel (where a ratio above 1 comes from)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events) / steps / 1000
    print(f"\n{name}: {total:.2f} ms CUDA time per step in {len(events)} kernels; top {top}:")
    for e in sorted(events, key=lambda e: e.device_time_total, reverse=True)[:top]:
        print(f"  {e.device_time_total / steps / 1000:8.3f} ms {e.count // steps:5d}x  {e.key[:110]}")


if __name__ == "__main__":
    main()
