"""Regenerate tests/fixtures/prune_golden.pt from PR #415's own magnitude-pruning statements.

The record's pruning is not a function: it is the `if args.prune_pct > 0:` block of its `main()`,
which zeroes entries of `sd_cpu` (the CPU copy of the final state dict) in place, before its int6
quantizer. This script reads the record script from a path the user gives (no record code is copied
into this repository) and never imports or runs it: it takes from its syntax tree the class
`Hyperparameters` (defined with only `os` and `uuid` in scope, as the script's header imports them,
under the environment below) and that block of `main()`, and executes the block unchanged with the
names it reads bound to:

    args           Hyperparameters() with PRUNE_PCT unset (the record's default, 0.01) or PRUNE_PCT=0.25
    sd_cpu         clones of `tests.plugins.test_prune.make_inputs()` (integer draws: the same bits on
                   every CPU; 2-D tensors just over, at and well over 65,536 entries, fp32 and bf16, with
                   ties at the threshold and negative zeros; 1-D, 3-D and small ones)
    torch          torch, with `torch.quantile` wrapped to record each threshold (it returns the real one)
    master_process True; log0 a list collector (the record's log line is stored)

Stored: per input tensor its sha256 digest, dtype and shape (the inputs themselves are over the
fixture budget; `make_inputs()` rebuilds them and tests/plugins/test_prune.py checks the digests), and
per PRUNE_PCT value the outputs' digests, the zeroed positions of each tensor as packed bits, the
thresholds torch.quantile returned (in call order), the number of zeroed entries and the log lines.

    git --git-dir=PG show 358a426ed9bf621a6814ece8d4901e4127633af4:records/track_10min_16mb/\\
2026-03-22_TwoPhase_TTT_NormRepair/train_gpt.py > pr415.py
    python tools/make_prune_goldens.py --record-script pr415=pr415.py \\
        [--commit pr415=358a426ed9bf621a6814ece8d4901e4127633af4] [--check]

`--check` writes nothing: it regenerates and compares every value (stamps aside) with the committed
fixture, bit for bit, and exits 1 on any difference.
"""

from __future__ import annotations

import ast
import os
import sys
import uuid
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.plugins.test_prune import FRACTIONS, digest, make_inputs, pack  # noqa: E402
from tools.make_goldens import check_or_write, golden_parser, name_pairs  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "prune_golden.pt"
RECORDS = {"pr415": ("#415", "2026-03-22_TwoPhase_TTT_NormRepair")}


def record_nodes(path: Path) -> tuple[ast.Module, ast.Module]:
    """(the `class Hyperparameters` definition, main()'s `if args.prune_pct > 0:` block)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hp = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Hyperparameters"]
    main = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]

    def is_prune(node: ast.stmt) -> bool:
        if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
            return False
        left = node.test.left
        return isinstance(left, ast.Attribute) and left.attr == "prune_pct" and ast.unparse(left) == "args.prune_pct"

    blocks = [n for n in main[0].body if is_prune(n)] if main else []
    if len(hp) != 1 or len(blocks) != 1:
        raise SystemExit(f"{path}: no `class Hyperparameters` / one `if args.prune_pct > 0:` in main() (not PR #415's)")
    return ast.Module(body=hp, type_ignores=[]), ast.Module(body=blocks, type_ignores=[])


def hyperparameters(code, env: dict[str, str]) -> object:
    """`Hyperparameters()` of the record, its class body evaluated under `env` (PRUNE_PCT removed first)."""
    scope: dict = {"os": os, "uuid": uuid}
    with mock.patch.dict(os.environ, clear=False):
        os.environ.pop("PRUNE_PCT", None)
        os.environ.update(env)
        exec(code, scope)  # noqa: S102 - the record's own class definition, from the user's file
        return scope["Hyperparameters"]()


def run_record(hp_code, prune_code, fraction: float | None) -> dict:
    """The record's pruning block on clones of the inputs, PRUNE_PCT = `fraction` (None: its default)."""
    args = hyperparameters(hp_code, {} if fraction is None else {"PRUNE_PCT": repr(fraction)})
    inputs = make_inputs()
    sd_cpu = {k: v.clone() for k, v in inputs.items()}
    thresholds: list[torch.Tensor] = []
    log: list[str] = []
    real = torch.quantile

    def spy(*a, **k):
        out = real(*a, **k)
        thresholds.append(out.clone())
        return out

    scope = {"args": args, "sd_cpu": sd_cpu, "torch": torch, "master_process": True, "log0": log.append}
    with mock.patch.object(torch, "quantile", spy):
        exec(prune_code, scope)  # noqa: S102 - the record's own pruning statements, from the user's file
    masks = {k: zeroed_mask(inputs[k], sd_cpu[k]) for k in sd_cpu}
    return {
        "prune_pct": float(args.prune_pct),
        "outputs": {k: digest(v) for k, v in sd_cpu.items()},
        "zeroed": {k: pack(m) for k, m in masks.items()},
        "zeroed_count": int(sum(int(m.sum()) for m in masks.values())),
        "thresholds": thresholds,
        "log": log,
    }


def zeroed_mask(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Where the record changed an entry (bit-wise; every change must be to +0.0)."""
    bits = torch.int16 if before.element_size() == 2 else torch.int32
    changed = before.reshape(-1).view(bits) != after.reshape(-1).view(bits)
    assert bool((after.reshape(-1)[changed] == 0).all()) and not torch.signbit(after.reshape(-1)[changed]).any()
    return changed


def make(path: Path) -> dict:
    hp, block = record_nodes(path)
    hp_code, prune_code = compile(hp, str(path), "exec"), compile(block, str(path), "exec")
    default = float(hyperparameters(hp_code, {}).prune_pct)
    runs = {str(f): run_record(hp_code, prune_code, None if f == default else f) for f in FRACTIONS}
    if default not in FRACTIONS:
        raise SystemExit(f"the record's default PRUNE_PCT is {default}, not among {FRACTIONS}")
    return {
        "default_prune_pct": default,
        "inputs": {k: (digest(v), str(v.dtype), list(v.shape)) for k, v in make_inputs().items()},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    args = golden_parser(__doc__.split("\n\n")[0], FIXTURE).parse_args(argv)
    scripts = {k: Path(v) for k, v in name_pairs(args.record_script, "--record-script", RECORDS).items()}
    commits = name_pairs(args.commit, "--commit", RECORDS)
    if "pr415" not in scripts:
        raise SystemExit("--record-script pr415=PATH is required")
    if not scripts["pr415"].is_file():
        raise SystemExit(f"--record-script pr415={scripts['pr415']}: no such file")
    data = make(scripts["pr415"])
    failed = check_or_write(
        data, args.out, args.check, "tools/make_prune_goldens.py", RECORDS, ["pr415"], scripts, commits
    )
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
