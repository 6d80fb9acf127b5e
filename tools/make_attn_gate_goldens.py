"""Regenerate examples/pgolf-attn-gate/tests/golden.pt from the records' own attention code, and stamp it.

The fixture holds what the records' `CausalSelfAttention` computes with its attention output gate on
(PR #1667's AttnOutGate, PR #1736's dense Gated Attention, PR #1787's sparse gate) on small shapes:
the inputs (normed block input x, the attention kernel's output y), the gate weight set into the
record's module, and the record's gated y just before the output projection (the record keeps it
as `_last_proj_input` when `_calib` is set). The pgolf-attn-gate example package must match it
(examples/pgolf-attn-gate/tests/test_attn_gate.py).

The record scripts are read from paths the user gives (checkouts of openai/parameter-golf at the PR
heads below; no record code is copied into this repository) and are never run as scripts: only the
classes named here are taken from each script's syntax tree and defined in a namespace of their own
(their top-level imports of flash-attn and triton are not executed). The FlashAttention-3 call
inside the record's forward is answered by a stand-in that returns the fixture's y (and keeps the
values v it was given): the kernel is not what is tested, the gate after it is.

    R=PG/records/track_10min_16mb  # each file as of its PR head below (git show SHA:PATH > FILE)
    PR1787_FOLDER=2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE
    python tools/make_attn_gate_goldens.py \\
      --record-script pr1667=$R/2026-04-16_SmearGate_AttentionOutputGate_ScoreFirstTTT/train_gpt.py \\
      --record-script pr1736=$R/2026-04-19_SP8192_CaseOps_GatedAttn_QuantGate_Loop45_PhasedTTT/train_gpt.py \\
      --record-script pr1787=$R/$PR1787_FOLDER/train_gpt.py \\
      [--commit pr1667=e6481377...] [--check]

PR heads (`git fetch origin pull/N/head`): #1667 e648137704c0020faff5ca26c9b9d5de76bba6f9, #1736
8e67c8d7ca0aabb776ec9f5857676e288b0f1390, #1787 b667ea2576768b980dab16e1b75e9210f78a27c7. `--check`
writes nothing: it regenerates and compares every value (stamps aside) with the committed fixture,
bit for bit, and exits 1 on any difference. The generator also checks that the later records'
copies of a gate compute the earlier record's values bit for bit (#1736 and #1787 carry #1667's
AttnOutGate; #1787 carries #1736's dense gate).
"""

from __future__ import annotations

import ast
import math
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.make_export_goldens import record_source, top_level  # noqa: E402
from tools.make_goldens import check_or_write, differences, golden_parser, name_pairs  # noqa: E402

FIXTURE = ROOT / "examples" / "pgolf-attn-gate" / "tests" / "golden.pt"
RECORDS = {  # name -> (PR, folder under records/track_10min_16mb/)
    "pr1667": ("#1667", "2026-04-16_SmearGate_AttentionOutputGate_ScoreFirstTTT"),
    "pr1736": ("#1736", "2026-04-19_SP8192_CaseOps_GatedAttn_QuantGate_Loop45_PhasedTTT"),
    "pr1787": ("#1787", "2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE"),
}
CLASSES = ("CastedLinear", "Rotary", "apply_rotary_emb", "CausalSelfAttention")
B, T, DIM, HEADS, KV_HEADS, WIDTH = 2, 5, 32, 4, 2, 12
HEAD_DIM = DIM // HEADS
# case -> (record, record constructor settings, gate parameter in the record's module, use_xsa, dtype)
GATE_ON = {
    "pr1667": {"gate_attn_out": True, "gate_attn_src": "proj", "gate_width": WIDTH},
    "pr1736": {"attn_out_gate": True, "attn_out_gate_src": "proj", "gate_window": WIDTH},
}
CASES: dict[str, tuple[str, dict[str, Any], str, bool, torch.dtype]] = {
    "out_gate": ("pr1667", GATE_ON["pr1667"], "attn_gate_proj.weight", False, torch.float32),
    "out_gate_bf16": ("pr1667", GATE_ON["pr1667"], "attn_gate_proj.weight", False, torch.bfloat16),
    "out_gate_xsa": ("pr1667", GATE_ON["pr1667"], "attn_gate_proj.weight", True, torch.float32),
    "dense": ("pr1736", {"gated_attn": True, "gated_attn_init_std": 0.005}, "attn_gate_w", False, torch.float32),
    "dense_bf16": ("pr1736", {"gated_attn": True, "gated_attn_init_std": 0.005}, "attn_gate_w", False, torch.bfloat16),
    "sparse": (
        "pr1787",
        {"sparse_attn_gate": True, "sparse_attn_gate_init_std": 0.0, "sparse_attn_gate_scale": 1.0, "gate_window": 12},
        "attn_gate_w",
        False,
        torch.float32,
    ),
    "sparse_scale": (  # a setting the record exposes (SPARSE_ATTN_GATE_SCALE), not the one it ran
        "pr1787",
        {"sparse_attn_gate": True, "sparse_attn_gate_init_std": 0.0, "sparse_attn_gate_scale": 0.5, "gate_window": 12},
        "attn_gate_w",
        False,
        torch.float32,
    ),
}
# The later records' copies of an earlier gate, checked to give the same values (not stored).
SAME_AS = {
    "pr1736:out_gate": ("pr1736", GATE_ON["pr1736"], "out_gate"),
    "pr1787:out_gate": ("pr1787", GATE_ON["pr1736"], "out_gate"),
    "pr1787:dense": ("pr1787", {"gated_attn": True, "gated_attn_init_std": 0.005}, "dense"),
}
INIT_SEED = 1234


class FlashStandIn:
    """Answers the record's `flash_attn_3_func(q, k, v, causal=True)` with a given y; keeps v."""

    def __init__(self) -> None:
        self.y: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
        assert causal and self.y is not None and q.shape == self.y.shape
        self.v = v.detach().clone()
        return self.y

    def varlen(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise SystemExit("the record took the varlen attention path (cu_seqlens given): not expected here")


def record_namespace(path: Path) -> dict[str, Any]:
    """The script's CausalSelfAttention and what it needs, plus CONTROL_TENSOR_NAME_PATTERNS (its
    default: the script reads it from an empty environment here), defined in a namespace of their own."""
    body = top_level(record_source(path))
    defs = {n.name: n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    missing = [n for n in CLASSES if n not in defs]
    key = "CONTROL_TENSOR_NAME_PATTERNS"
    patterns = [
        n for n in body if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == key for t in n.targets)
    ]
    if missing or len(patterns) != 1:
        raise SystemExit(f"{path}: no {', '.join(missing) or key} (not a record this golden needs)")
    flash = FlashStandIn()
    ns: dict[str, Any] = {
        "__name__": "record",
        "torch": torch,
        "F": F,
        "nn": nn,
        "math": math,
        "os": types.SimpleNamespace(environ={}),
        "flash_attn_3_func": flash,
        "flash_attn_varlen_func": flash.varlen,
    }
    exec(compile(ast.Module(body=[*patterns, *(defs[n] for n in CLASSES)], type_ignores=[]), str(path), "exec"), ns)
    ns["__flash__"] = flash
    return ns


def make_attention(ns: dict[str, Any], settings: dict[str, Any], use_xsa: bool) -> nn.Module:
    attn = ns["CausalSelfAttention"](DIM, HEADS, KV_HEADS, 10000.0, 1.5, 64, **settings)
    attn.use_xsa = use_xsa
    attn._calib = True  # the record then keeps the gated y (before the output projection) in _last_proj_input
    return attn


def gate_param(attn: nn.Module, name: str) -> nn.Parameter:
    params = dict(attn.named_parameters())
    if name not in params:
        raise SystemExit(f"the record's attention has no {name} (its parameters: {', '.join(params)})")
    return params[name]


def inputs(case: str, dtype: torch.dtype, width: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(sum(map(ord, case.replace("_bf16", ""))))
    x = F.rms_norm(torch.randn(B, T, DIM, generator=g), (DIM,))  # a normed block input, as the record's attn sees
    return {
        "x": x.to(dtype),
        "y": torch.randn(B, T, HEADS, HEAD_DIM, generator=g).to(dtype),
        "weight": torch.randn(HEADS, width, generator=g) * 0.5,  # fp32 master weight, as the records keep it
        "q_w": torch.randn(DIM, DIM, generator=g) / math.sqrt(DIM),
        "k_w": torch.randn(KV_HEADS * HEAD_DIM, DIM, generator=g) / math.sqrt(DIM),
        "v_w": torch.randn(KV_HEADS * HEAD_DIM, DIM, generator=g) / math.sqrt(DIM),
        "out_w": torch.randn(DIM, DIM, generator=g) / math.sqrt(DIM),
    }


def run_record(ns: dict[str, Any], settings: dict[str, Any], param: str, use_xsa: bool, data: dict) -> dict:
    attn = make_attention(ns, settings, use_xsa)
    w = gate_param(attn, param)
    if w.shape != data["weight"].shape:
        shape = tuple(data["weight"].shape)
        raise SystemExit(f"the record's {param} is {tuple(w.shape)}, the fixture's weight {shape}")
    with torch.no_grad():
        w.copy_(data["weight"])
    flash = ns["__flash__"]
    flash.y = data["y"]
    with torch.no_grad():
        out = attn(data["x"], data["q_w"], data["k_w"], data["v_w"], data["out_w"])
    gated = attn._last_proj_input
    return {"v": flash.v, "out": gated.reshape(data["y"].shape), "attn_out": out}


def init_facts(ns: dict[str, Any], settings: dict[str, Any], param: str) -> dict[str, Any]:
    """How the record initializes its gate weight (the draw itself is checked here, not stored: the
    bits of normal_ depend on the CPU's vector path)."""
    torch.manual_seed(INIT_SEED)
    attn = make_attention(ns, settings, False)
    w = gate_param(attn, param).detach()
    owner = attn.get_submodule(param.rpartition(".")[0]) if "." in param else attn
    facts: dict[str, Any] = {
        "shape": list(w.shape),
        "dtype": str(w.dtype),
        "zero_init_flag": bool(getattr(owner, "_zero_init", False)),  # zeroed later by the record's GPT._init_weights
        "all_zero": bool((w == 0).all()),
        "normal_std": 0.0,
    }
    std = settings.get("gated_attn_init_std" if settings.get("gated_attn") else "sparse_attn_gate_init_std")
    if std:
        torch.manual_seed(INIT_SEED)
        expect = torch.empty(w.shape, dtype=torch.float32)
        nn.init.normal_(expect, mean=0.0, std=std)
        if not torch.equal(w, expect):
            raise SystemExit(f"the record's {param} init is not one normal_(0, {std}) draw on a fresh tensor")
        facts["normal_std"] = float(std)
    name = f"blocks.0.attn.{param}"
    facts["record_name"] = name
    facts["control"] = any(p in name for p in ns["CONTROL_TENSOR_NAME_PATTERNS"])
    return facts


def build(scripts: dict[str, Path]) -> dict:
    spaces = {name: record_namespace(path) for name, path in scripts.items()}
    data: dict = {"shapes": {"B": B, "T": T, "dim": DIM, "heads": HEADS, "kv_heads": KV_HEADS, "width": WIDTH}}
    cases: dict = {}
    for case, (record, settings, param, use_xsa, dtype) in CASES.items():
        width = DIM if "gated_attn" in settings else WIDTH
        given = inputs(case, dtype, width)
        got = run_record(spaces[record], settings, param, use_xsa, given)
        cases[case] = {
            "record": record,
            "settings": dict(settings),
            "use_xsa": use_xsa,
            "x": given["x"],
            "y": given["y"],
            "v": got["v"],
            "weight": given["weight"],
            "out": got["out"],
            "init": init_facts(spaces[record], settings, param),
        }
    for label, (record, settings, case) in SAME_AS.items():
        _, _, param, use_xsa, dtype = CASES[case]
        width = DIM if "gated_attn" in settings else WIDTH
        again = run_record(spaces[record], settings, param, use_xsa, inputs(case, dtype, width))["out"]
        if differences(again, cases[case]["out"], label):
            raise SystemExit(f"{label}: the {RECORDS[record][0]} copy of the gate differs from {CASES[case][0]}'s")
    data["cases"] = cases
    return data


def main(argv: list[str] | None = None) -> int:
    args = golden_parser(__doc__.split("\n\n")[0], FIXTURE).parse_args(argv)
    scripts = {k: Path(v) for k, v in name_pairs(args.record_script, "--record-script", RECORDS).items()}
    missing = sorted(set(RECORDS) - set(scripts))
    if missing:
        raise SystemExit(f"missing --record-script for {', '.join(missing)}")
    for name, path in scripts.items():
        if not path.is_file():
            raise SystemExit(f"--record-script {name}={path}: no such file")
    torch.set_num_threads(1)  # one reduction order for the CPU matmuls (with 2 threads `v` differs in the last bit)
    data = build(scripts)
    commits = name_pairs(args.commit, "--commit", RECORDS)
    failed = check_or_write(
        data, args.out, args.check, "tools/make_attn_gate_goldens.py", RECORDS, list(RECORDS), scripts, commits
    )
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
