"""Does PR #414's late QAT reach its compiled graph? Run the record's own model past the switch.

The record switches late QAT by setting the class attribute `CastedLinear._qat_enabled = True`
after `torch.compile(base_model, dynamic=False, fullgraph=True)` has already traced the training
graph with it False. Whether the flip takes effect depends on whether Dynamo
guards that attribute: if it does, the next call recompiles and fake-quantizes; if not, the cached
graph keeps running without QAT. This script builds the record's `GPT` (the script you pass, loaded
at run time, never vendored) exactly as the record's `main` does (bf16 model, fp32 `CastedLinear`
weights and control tensors, the same compile call, bf16 autocast in training mode), warms the
compiled model up with QAT off, flips the attribute as the record does, and compares the compiled
loss and gradients with the eager model's with QAT on and off.

    python benchmarks/check_late_qat_record.py --record-script PATH/TO/PR414/train_gpt.py [--small]

Prints a verdict and a JSON line (`--json PATH` writes it too). `--small` shrinks the model for a
CPU dry run; the answer that matters is the full-size one on the records' hardware (CUDA, bf16).
"""

from __future__ import annotations

import argparse
import json
import sys
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
from pgolf_core import load_recipe  # noqa: E402

SMALL = dict(
    num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2, bigram_vocab_size=256, bigram_dim=32,
    xsa_last_n=2, rope_dims=16, ve_dim=32, ve_layers="2,3",
)  # fmt: skip
PROBE = "blocks.0.mlp.fc.weight"  # a block linear that late QAT fake-quantizes


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record-script", type=Path, required=True, help="a PR #414 train_gpt.py")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--small", action="store_true", help="a small model (CPU dry run)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # the record's backend settings
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    record = load_record(args.record_script, "CastedLinear")
    recipe = load_recipe(ROOT / "recipes" / "pr414.toml")
    kwargs = {**pr414_record_kwargs(recipe), **(SMALL if args.small else {})}
    record.CastedLinear._qat_enabled = False  # args.qat_enabled = 0 in the #414 run
    torch.manual_seed(1337)
    model = as_the_record_trains_on_cuda(record, record.GPT(**kwargs).to(device))
    perturb(model, seed=2)
    compiled = torch.compile(model, dynamic=False, fullgraph=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, kwargs["vocab_size"], (args.batch, args.seq), generator=g).to(device)
    y = torch.randint(0, kwargs["vocab_size"], (args.batch, args.seq), generator=g).to(device)
    probe = dict(model.named_parameters())[PROBE]

    def loss_and_grad(net: torch.nn.Module) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = net(x, y)
        loss.backward()
        return float(loss.item()), probe.grad.detach().float().clone()

    graphs = torch._dynamo.utils.counters["stats"]
    for _ in range(3):  # the record's warmup steps compile the graph with QAT off
        off_c, off_c_grad = loss_and_grad(compiled)
    graphs_before = graphs["unique_graphs"]
    record.CastedLinear._qat_enabled = True  # what the record does when scale < late_qat_threshold
    on_c, on_c_grad = loss_and_grad(compiled)
    on_c2, _ = loss_and_grad(compiled)
    graphs_after = graphs["unique_graphs"]
    on_e, on_e_grad = loss_and_grad(model)
    record.CastedLinear._qat_enabled = False
    off_e, off_e_grad = loss_and_grad(model)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    applied = abs(on_c - on_e) < abs(on_c - off_e) and rel(on_c_grad, on_e_grad) < rel(on_c_grad, off_e_grad)
    result = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": "small" if args.small else "full",
        "batch": [args.batch, args.seq],
        "compiled_loss_qat_off": off_c,
        "compiled_loss_after_flip": on_c,
        "compiled_loss_after_flip_again": on_c2,
        "eager_loss_qat_on": on_e,
        "eager_loss_qat_off": off_e,
        "grad_rel_diff_compiled_after_flip_vs_eager_on": rel(on_c_grad, on_e_grad),
        "grad_rel_diff_compiled_after_flip_vs_eager_off": rel(on_c_grad, off_e_grad),
        "grad_rel_diff_compiled_off_vs_eager_off": rel(off_c_grad, off_e_grad),
        "graphs_compiled_at_flip": graphs_after - graphs_before,
        "qat_applied_after_flip": applied,
    }
    print(json.dumps(result, indent=1))
    verdict = "TAKES EFFECT" if applied else "DOES NOT take effect"
    print(
        f"verdict: the record's late-QAT flip {verdict} in its compiled graph "
        f"(torch {torch.__version__}, {result['device']}; "
        f"{result['graphs_compiled_at_flip']} graph(s) compiled at the flip)"
    )
    if args.json:
        args.json.write_text(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
