"""Regenerate tests/fixtures/ttt_two_phase_golden.pt from PR #415's own two-phase TTT code.

The record's TTT is not a function: it is a block of statements inside its `main()` (the `ttt_*`
settings read from the environment, then `if ttt_enabled:` with the nested `run_ttt_phase` and the
two calls). This script reads the record script from a path the user gives (no record code is copied
into this repository), imports it at small shapes through its environment variables, finds those
statements in `main()` with `ast` (from the assignment of `ttt_enabled` to the end of the `if
ttt_enabled:` block) and executes them unchanged, with the names they read from `main()` bound to:

    eval_model             the record's GPT at small shapes, fp32 (its constructor arguments as
                           `main()` passes them), weights `tests.plugins.golden.randomize(sd, INIT_SEED)`
    val_tokens             a random stream of STREAM_TOKENS tokens (26 rows of 64 and 10 tokens more)
    effective_eval_seq_len SEQ_LEN = 64
    device, rank, world_size, distributed, log0
                           CPU, 0, 1, False, a list collector

and TTT_BATCH_SEQS=8, TTT_P1_EPOCHS=3, TTT_P2_EPOCHS=2 in the environment (its other TTT settings at
their defaults). `torch.manual_seed(SEED)` is called right before, so the record's per-epoch
`torch.randperm(usable, device=device)` draws from the CPU default generator seeded with SEED.

Shims (CPU, one process; none changes the math): `torch.cuda.synchronize` is a no-op, and
`torch.compile` returns the module itself (eager; the compiled graph computes the same function).
`torch.autocast(device_type="cuda", ...)` disables itself on a machine without CUDA (a warning), so
the forwards run in fp32 as the model is built; the record casts its `eval_model` to bf16 on the GPU
before TTT, outside the TTT statements, which this fp32 build leaves out.

Two runs, from the same start and seed: `qat_on` with the record's class-wide late-QAT flag
`CastedLinear._qat_enabled = True` (as it stays after the record's training: its TTT forwards are
fake-quantized) and `qat_off` with it False (the fix). Stored per run: each phase's trainable
parameter names (those with `requires_grad` when the phase logs its start), the phase-1 parameters
after phase 1, the phase-2 parameters after phase 2 (the others are never trained; for `qat_off`
only block 10's, the scales' and the embedding's, for the 300 KB budget), the record's log lines
(but the timing). The initial weights are stored as their integer-draw seed (INIT_SEED; `randomize`
gives the same bits on every CPU) and a float64 checksum of them: the full state dict alone would be
over the 300 KB fixture budget.

    git --git-dir=PG show 358a426ed9bf621a6814ece8d4901e4127633af4:records/track_10min_16mb/\\
2026-03-22_TwoPhase_TTT_NormRepair/train_gpt.py > pr415.py
    python tools/make_ttt_two_phase_goldens.py --record-script pr415=pr415.py \\
        [--commit pr415=358a426ed9bf621a6814ece8d4901e4127633af4] [--check]

`--check` writes nothing: it regenerates and compares every value (stamps aside) with the committed
fixture, bit for bit, and exits 1 on any difference. Needs `zstandard` and `sentencepiece` (the
script imports them at top level).
"""

from __future__ import annotations

import ast
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.plugins.golden import randomize  # noqa: E402
from tools.make_goldens import check_or_write, golden_parser, name_pairs  # noqa: E402
from tools.make_ttt_record_goldens import build_record_gpt, import_record, record_env  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "ttt_two_phase_golden.pt"
RECORDS = {"pr415": ("#415", "2026-03-22_TwoPhase_TTT_NormRepair")}
# The record's environment at the small shapes (everything else: its defaults: 11 layers, MLP 3x, XSA
# on the last 4, value embeddings on layers 9 and 10, ...). Model dim 32 with 2 heads of 16 (1 KV head)
# keeps the phase-2 tensors small enough to store; ROPE_DIMS 8 keeps the rotary partial.
MODEL_ENV = {
    "VOCAB_SIZE": "64", "MODEL_DIM": "32", "NUM_HEADS": "2", "NUM_KV_HEADS": "1",
    "BIGRAM_VOCAB_SIZE": "64", "BIGRAM_DIM": "16", "VE_DIM": "16", "ROPE_DIMS": "8",
}  # fmt: skip
TTT_ENV = {"TTT_BATCH_SEQS": "8", "TTT_P1_EPOCHS": "3", "TTT_P2_EPOCHS": "2"}
SEQ_LEN = 64
STREAM_TOKENS = 26 * SEQ_LEN + 1 + 10  # 26 full rows; 24 used (3 steps of 8 rows per epoch)
INIT_SEED = 4150  # randomize(...) seed of the initial weights
STREAM_SEED = 4151
SEED = 4152  # torch.manual_seed before the TTT: the record's torch.randperm reads the default generator
PHASES = ("phase1_norm", "phase2_block")  # the record's phase names (its log lines)
PHASE1_LEAVES = ("attn_scale", "mlp_scale", "resid_mix")


def ttt_statements(path: Path) -> ast.Module:
    """The record `main()`'s TTT statements: from `ttt_enabled = ...` to the end of `if ttt_enabled:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")

    def assigns(node: ast.stmt, name: str) -> bool:
        return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)

    def tests(node: ast.stmt, name: str) -> bool:
        return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == name

    try:
        first = next(i for i, n in enumerate(main.body) if assigns(n, "ttt_enabled"))
        last = next(i for i, n in enumerate(main.body) if tests(n, "ttt_enabled"))
    except StopIteration:
        msg = f"{path}: main() has no `ttt_enabled = ...` / `if ttt_enabled:` (not PR #415's script)"
        raise SystemExit(msg) from None
    return ast.Module(body=main.body[first : last + 1], type_ignores=[])


@contextlib.contextmanager
def cpu_shims() -> Iterator[None]:
    """CUDA-only calls of the TTT statements made CPU-safe (see the module docstring)."""
    with (
        mock.patch.object(torch.cuda, "synchronize", lambda *a, **k: None),
        mock.patch.object(torch, "compile", lambda model, *a, **k: model),
    ):
        yield


def initial_weights(rec: ModuleType) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_record_gpt("pr415", rec)
    init = randomize(model.state_dict(), INIT_SEED)
    model.load_state_dict(init, strict=True)
    return model, init


def stream() -> torch.Tensor:
    g = torch.Generator().manual_seed(STREAM_SEED)
    return torch.randint(0, int(MODEL_ENV["VOCAB_SIZE"]), (STREAM_TOKENS,), generator=g)


def checksum(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float64 sums of each tensor and of each tensor times a position ramp (order-sensitive)."""
    out = []
    for name in sorted(state):
        t = state[name].detach().double().flatten()
        out += [t.sum(), (t * torch.arange(1, t.numel() + 1, dtype=torch.float64)).sum()]
    return torch.stack(out)


def run_record_ttt(rec: ModuleType, code, qat: bool, keep=lambda name: True) -> dict:
    """The record's TTT statements on the small model, from the initial weights and SEED; the phase-2
    parameters stored are those `keep` accepts."""
    model, _ = initial_weights(rec)
    snapshots: dict = {"trainable": {}, "log": []}

    def log0(msg: str, console: bool = True) -> None:
        if not msg.startswith("ttt:all_done"):  # its wall time is not a result
            snapshots["log"].append(msg)
        for phase in PHASES:
            if msg.startswith(f"ttt:{phase}:start"):
                snapshots["trainable"][phase] = [n for n, p in model.named_parameters() if p.requires_grad]
            if msg == f"ttt:{phase}:done":
                names = [n for n in snapshots["trainable"][phase] if phase == PHASES[0] or keep(n)]
                snapshots[phase] = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}

    scope = dict(vars(rec))
    scope.update(
        eval_model=model, val_tokens=stream(), effective_eval_seq_len=SEQ_LEN, device=torch.device("cpu"),
        rank=0, world_size=1, distributed=False, log0=log0,
    )  # fmt: skip
    rec.CastedLinear._qat_enabled = qat
    try:
        with record_env(TTT_ENV), cpu_shims():
            torch.manual_seed(SEED)
            exec(code, scope)  # noqa: S102 - the record's own TTT statements, from the user's file
    finally:
        rec.CastedLinear._qat_enabled = False
    return snapshots


def qat_off_kept(name: str) -> bool:
    """The fix's run stores of phase 2 the last block, the embedding and the scales (the fixture budget)."""
    return not name.startswith(("blocks.8.", "blocks.9.")) or name.rsplit(".", 1)[-1] in PHASE1_LEAVES


def make(path: Path) -> dict:
    rec = import_record("pr415", path, MODEL_ENV)
    code = compile(ttt_statements(path), str(path), "exec")
    _, init = initial_weights(rec)
    return {
        "model_env": dict(MODEL_ENV),
        "ttt_env": dict(TTT_ENV),
        "settings": {"seq_len": SEQ_LEN, "batch_rows": 8, "phase1_epochs": 3, "phase2_epochs": 2,
                     "phase1_lr": 0.01, "phase2_lr": 0.005, "phase2_momentum": 0.9, "phase2_last_blocks": 3},
        "init_seed": INIT_SEED,
        "init_checksum": checksum(init),
        "stream": stream().to(torch.int16),
        "seed": SEED,
        "runs": {"qat_on": run_record_ttt(rec, code, True), "qat_off": run_record_ttt(rec, code, False, qat_off_kept)},
    }  # fmt: skip


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
        data, args.out, args.check, "tools/make_ttt_two_phase_goldens.py", RECORDS, ["pr415"], scripts, commits
    )
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
