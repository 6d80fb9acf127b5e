"""Regenerate tests/fixtures/ttt_sgd_golden.pt and ttt_score_first_golden.pt from the records' own TTT code.

pgolf's ttt_sgd and ttt_score_first plugins must make the same update as the records' test-time training
functions; these fixtures hold what the record code computes. The record scripts are read from paths the
user gives (checkouts of openai/parameter-golf at the PR heads; no record code is copied into this
repository) and imported with their hyperparameters set the records' way, through environment variables
read when the script is imported (`SMALL_ENV`: vocab 64, model_dim 16, 2 heads, 1 KV head, 3 layers,
bigram table 64 x 8, rows of 32 tokens, sliding stride 16; every other setting is the scripts' default).

- ttt_sgd (PR #297 `eval_val_sgd_ttt`): the record's `GPT` at those shapes (fp32, CPU, built as its
  `main()` builds it), weights `tests.plugins.golden.randomize(..., 297)`, adapted on a stream of 40 rows
  (SGD_TTT_BATCH_SEQS=16, so batches of 16, 16 and 8 rows; lr 3e-4 and momentum 0.95 are the defaults),
  then scored by the record's sliding window (its return value).
- ttt_score_first (PR #549 `eval_val_sliding_ttt`, PR #461's recipe): the same function run on the same
  small PR #297 `GPT` (weights `randomize(..., 549)`), over 1,024 targets in 4 chunks of 256
  (TTT_CHUNK_TOKENS=256; 8 rows per chunk, TTT_BATCH_SEQS=4: 2 steps per epoch; lr 0.002, 3 epochs,
  momentum 0.9, clip 1.0, 2 frozen blocks are the defaults). #549's own `GPT` keeps its block matrices
  in parameter banks outside `blocks` (pgolf has no such model); #297's has PR #461's per-block layout,
  which pgolf's `recipes/pr297.toml` model reproduces (tests/plugins/test_record_models_ttt.py). The TTT
  function touches the model only through `blocks`, `named_parameters`, `forward(x, y)`,
  `forward_logits(x)` and train/eval.
Each fixture stores the settings, the token stream (int16), the byte tables, the initial and the adapted
state dict and the function's (val_loss, val_bpb).

CPU shim (documented, no math changed): the records wrap their forwards in
`torch.autocast(device_type="cuda", dtype=torch.bfloat16)`; on a machine without CUDA, torch disables
that autocast itself (with a warning) and the forwards run in fp32. While a record function runs here,
`torch.autocast(device_type="cuda")` is replaced by a null context, the same fp32 computation without the
warning; any other autocast is left alone. The record Rotary's cos/sin cache is filled by one forward
outside `inference_mode` first (`fill_rotary_caches`; on the GPU the bf16 cast made it a fresh tensor
per call, in fp32 autograd would refuse the cached inference tensor). FlashAttention-3 is replaced by
SDPA (benchmarks/record_script.py).

    git --git-dir=PG show 6b710c10e331ab8bfff3d779f381278e35a56ca3:records/track_10min_16mb/\\
2026-03-20_STE_QAT_MLP3x_SmearBigram_LoRATTT/train_gpt.py > pr297.py
    git --git-dir=PG show b08d72a96e98cac8add0543982fccd35bc8f4f4d:records/track_10min_16mb/\\
2026-03-23_LeakyReLU_LegalTTT_ParallelMuon/train_gpt.py > pr549.py
    python tools/make_ttt_goldens.py --record-script pr297=pr297.py --record-script pr549=pr549.py \\
        [--commit pr297=6b710c10e331ab8bfff3d779f381278e35a56ca3 --commit pr549=b08d72a9...] [--check]

Both fixtures need the #297 script (its `GPT`); ttt_score_first also needs #549's. `--check` writes
nothing: it regenerates and compares every value (stamps aside) with the committed fixtures, bit for bit,
and exits 1 on any difference (forwards may differ in the last bits on another CPU capability; the stamp
names the one they were made on). Needs `zstandard` and `sentencepiece` (the scripts import them).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import load_record  # noqa: E402
from tests.plugins.golden import randomize  # noqa: E402
from tools.make_goldens import check_or_write, golden_parser, name_pairs  # noqa: E402
from tools.make_ttt_record_goldens import build_record_gpt, record_env  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
RECORDS = {  # name -> (PR, folder under records/track_10min_16mb/)
    "pr297": ("#297", "2026-03-20_STE_QAT_MLP3x_SmearBigram_LoRATTT"),
    "pr549": ("#549", "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"),
}
SMALL_ENV = {
    "VOCAB_SIZE": "64", "MODEL_DIM": "16", "NUM_HEADS": "2", "NUM_KV_HEADS": "1", "NUM_LAYERS": "3",
    "BIGRAM_VOCAB_SIZE": "64", "BIGRAM_DIM": "8", "TRAIN_SEQ_LEN": "32", "EVAL_STRIDE": "16", "EVAL_BATCH_SEQS": "8",
}  # fmt: skip
TTT_ENV = {
    "ttt_sgd": {"SGD_TTT_BATCH_SEQS": "16"},
    "ttt_score_first": {"TTT_CHUNK_TOKENS": "256", "TTT_BATCH_SEQS": "4"},
}
STREAM_TOKENS = {"ttt_sgd": 40 * 32 + 1, "ttt_score_first": 1024 + 1}
SEEDS = {"ttt_sgd": 297, "ttt_score_first": 549}  # randomize seeds of the initial weights
NEEDS = {"ttt_sgd": ("pr297",), "ttt_score_first": ("pr297", "pr549")}


@contextlib.contextmanager
def cuda_autocast_off() -> Iterator[None]:
    """`torch.autocast(device_type="cuda")` as a null context while no CUDA device exists (what torch
    does itself, less its warning); every other autocast unchanged."""
    real = torch.autocast

    def autocast(device_type: str, *args, **kwargs):
        if device_type == "cuda" and not torch.cuda.is_available():
            return contextlib.nullcontext()
        return real(device_type, *args, **kwargs)

    torch.autocast = autocast  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        torch.autocast = real  # type: ignore[misc]


def fill_rotary_caches(model: torch.nn.Module, seq_len: int) -> None:
    """Run one forward outside `inference_mode`, so the record's Rotary caches its cos/sin as normal
    tensors: the TTT functions score first under `inference_mode`, and in fp32 the cache's
    `.to(dtype)` returns the cached tensor itself, which autograd then refuses to save (on the GPU
    the bf16 cast made a fresh tensor each call). Same values, computed by the record's code."""
    with torch.no_grad():
        model.forward_logits(torch.zeros(1, seq_len, dtype=torch.int64))


def byte_tables(vocab: int) -> dict[str, torch.Tensor]:
    """Small byte tables in the records' LUT form: 1-3 base bytes, some leading spaces and boundaries."""
    ids = torch.arange(vocab)
    return {
        "base_bytes": (ids % 3 + 1).to(torch.int16),
        "has_leading_space": ids % 5 == 0,
        "is_boundary": ids % 7 == 0,
    }


def stream(n: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g, dtype=torch.int64)


def import_record(path: Path, env: dict[str, str]) -> ModuleType:
    with record_env(env):
        return load_record(path, "Hyperparameters")


def make(fixture: str, scripts: dict[str, Path]) -> dict:
    env = {**SMALL_ENV, **TTT_ENV[fixture]}
    r297 = import_record(scripts["pr297"], env)
    torch.manual_seed(0)
    model = build_record_gpt("pr297", r297)
    initial = randomize(model.state_dict(), SEEDS[fixture])
    model.load_state_dict(initial, strict=True)
    vocab = r297.Hyperparameters.vocab_size
    tokens = stream(STREAM_TOKENS[fixture], vocab, SEEDS[fixture])
    luts = byte_tables(vocab)
    lut_args = (luts["base_bytes"], luts["has_leading_space"], luts["is_boundary"])
    cpu = torch.device("cpu")
    fill_rotary_caches(model, r297.Hyperparameters.train_seq_len)
    with cuda_autocast_off():
        if fixture == "ttt_sgd":
            a = r297.Hyperparameters()
            settings = dict(lr=a.sgd_ttt_lr, momentum=a.sgd_ttt_momentum, batch_rows=a.sgd_ttt_batch_seqs)
            val_loss, val_bpb = r297.eval_val_sgd_ttt(a, model, 0, 1, cpu, tokens, *lut_args)
        else:
            r549 = import_record(scripts["pr549"], env)
            a = r549.Hyperparameters()
            settings = dict(
                lr=a.ttt_lr, momentum=a.ttt_momentum, epochs=a.ttt_epochs, batch_rows=a.ttt_batch_seqs,
                grad_clip=a.ttt_grad_clip, freeze_blocks=a.ttt_freeze_blocks, chunk_tokens=a.ttt_chunk_tokens,
            )  # fmt: skip
            val_loss, val_bpb = r549.eval_val_sliding_ttt(
                a, model, 0, 1, cpu, tokens, *lut_args, stride=a.eval_stride, log0=lambda msg: None
            )
    # #549's main() leaves the scoring batch at the function's default, 32 windows
    settings.update(seq_len=a.train_seq_len, stride=a.eval_stride, eval_batch_seqs=getattr(a, "eval_batch_seqs", 32))
    return {
        "env": env,
        "settings": settings,
        "tokens": tokens.to(torch.int16),
        "tables": luts,
        "initial": initial,
        "adapted": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "val_loss": float(val_loss),
        "val_bpb": float(val_bpb),
        "requires_grad_after": [name for name, p in model.named_parameters() if not p.requires_grad],
    }


def main(argv: list[str] | None = None) -> int:
    args = golden_parser(__doc__.split("\n\n")[0], FIXTURES).parse_args(argv)
    scripts = {k: Path(v) for k, v in name_pairs(args.record_script, "--record-script", RECORDS).items()}
    commits = name_pairs(args.commit, "--commit", RECORDS)
    for name, path in scripts.items():
        if not path.is_file():
            raise SystemExit(f"--record-script {name}={path}: no such file")
    failed = False
    for fixture, needs in NEEDS.items():
        name = f"{fixture}_golden"
        missing = [n for n in needs if n not in scripts]
        if missing:
            print(f"{name}: skipped (no --record-script {'/'.join(missing)}=PATH)")
            continue
        data = make(fixture, scripts)
        path = args.out / f"{name}.pt"
        failed |= check_or_write(
            data, path, args.check, "tools/make_ttt_goldens.py", RECORDS, list(needs), scripts, commits
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
