"""Regenerate tests/fixtures/record_pr297_golden.pt and record_pr415_golden.pt from the records' own code.

pgolf's models built from `recipes/pr297.toml` and `recipes/pr415.toml` (at small shapes) must compute
the same function as the records' `GPT`; these fixtures hold what the record code computes. The
record scripts are read from paths the user gives (checkouts of openai/parameter-golf at the PR
heads; no record code is copied into this repository) and imported with their hyperparameters set
the records' way, through environment variables read when the script is imported (small shapes:
vocab 128, model_dim 128, 4 heads, 2 KV heads, bigram table 64 x 32, value embeddings 32 wide; the
layer counts, MLP width, XSA/RoPE/VE layout and every other setting are the records' defaults).
The record's `GPT` is built as its `main()` builds it, in fp32 on the CPU, its weights replaced by
`tests.plugins.golden.randomize` (integer draws: the same bits on every CPU), and its outputs are
stored: state-dict keys and shapes (small and full size, the full-size model built on the meta
device), the initial `resid_mix` and the tied embedding's singular values of the record's own init
(PR #297's Overtone/phase init), input ids, logits (sequence lengths 128 and 2048), losses, and the
training loss with the record's QAT switched on its own way (PR #297: the per-module `_ste_qat` flag
on the modules its `main()` marks `_should_qat`; PR #415: the class flag `CastedLinear._qat_enabled`).
PR #297's fixture also holds its int6 exporter's `quantize_int6_per_row` on stored integer-draw inputs.

    git --git-dir=PG show 6b710c10e331ab8bfff3d779f381278e35a56ca3:records/track_10min_16mb/\\
2026-03-20_STE_QAT_MLP3x_SmearBigram_LoRATTT/train_gpt.py > pr297.py
    git --git-dir=PG show 358a426ed9bf621a6814ece8d4901e4127633af4:records/track_10min_16mb/\\
2026-03-22_TwoPhase_TTT_NormRepair/train_gpt.py > pr415.py
    python tools/make_ttt_record_goldens.py --record-script pr297=pr297.py --record-script pr415=pr415.py \\
        [--commit pr297=6b710c10e331ab8bfff3d779f381278e35a56ca3 --commit pr415=358a426e...] [--check]

PR heads (`refs/pull/N/head`): #297 6b710c10e331ab8bfff3d779f381278e35a56ca3, #415
358a426ed9bf621a6814ece8d4901e4127633af4. `--check` writes nothing: it regenerates and compares every
value (stamps aside) with the committed fixtures, bit for bit, and exits 1 on any difference (record
forwards may differ in the last bits on another CPU capability; the stamp names the one they were
made on). Needs `zstandard` and `sentencepiece` (the scripts import them at top level).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_script import load_record  # noqa: E402
from tests.plugins.golden import randomize  # noqa: E402
from tools.make_goldens import check_or_write, golden_parser, name_pairs  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
RECORDS = {  # name -> (PR, folder under records/track_10min_16mb/)
    "pr297": ("#297", "2026-03-20_STE_QAT_MLP3x_SmearBigram_LoRATTT"),
    "pr415": ("#415", "2026-03-22_TwoPhase_TTT_NormRepair"),
}
# The records' environment variables at the small shapes (everything else: the records' defaults).
SMALL_ENV = {
    "pr297": {"VOCAB_SIZE": "128", "MODEL_DIM": "128", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
              "BIGRAM_VOCAB_SIZE": "64", "BIGRAM_DIM": "32"},
    "pr415": {"VOCAB_SIZE": "128", "MODEL_DIM": "128", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
              "BIGRAM_VOCAB_SIZE": "64", "BIGRAM_DIM": "32", "VE_DIM": "32"},
}  # fmt: skip
SEEDS = {"pr297": 297, "pr415": 415}  # tests.plugins.golden.randomize seeds of the record weights


@contextlib.contextmanager
def record_env(values: dict[str, str]) -> Iterator[None]:
    """The environment the record's `Hyperparameters` reads at import: `values` set, every other
    variable the records read left at the script's default (removed while importing)."""
    names = set(values) | {n for env in SMALL_ENV.values() for n in env}
    saved = {n: os.environ.get(n) for n in names}
    try:
        for n in names:
            os.environ.pop(n, None)
        os.environ.update(values)
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def import_record(name: str, path: Path, env: dict[str, str]) -> ModuleType:
    with record_env(env):
        return load_record(path, "GPT")


def build_record_gpt(name: str, rec: ModuleType) -> torch.nn.Module:
    """The record's `GPT` with the constructor arguments its `main()` passes (fp32, CPU)."""
    a = rec.Hyperparameters
    kwargs = dict(
        vocab_size=a.vocab_size, num_layers=a.num_layers, model_dim=a.model_dim, num_heads=a.num_heads,
        num_kv_heads=a.num_kv_heads, mlp_mult=a.mlp_mult, tie_embeddings=a.tie_embeddings,
        tied_embed_init_std=a.tied_embed_init_std, logit_softcap=a.logit_softcap, rope_base=a.rope_base,
        qk_gain_init=a.qk_gain_init, bigram_vocab_size=a.bigram_vocab_size, bigram_dim=a.bigram_dim,
    )  # fmt: skip
    if name == "pr415":
        kwargs.update(
            xsa_last_n=a.xsa_last_n, rope_dims=a.rope_dims, ln_scale=a.ln_scale, dtg=a.dtg_enabled,
            ve_enabled=a.ve_enabled, ve_dim=a.ve_dim, ve_layers=a.ve_layers,
        )  # fmt: skip
    return rec.GPT(**kwargs)


def qat_switch(name: str, rec: ModuleType, model: torch.nn.Module, on: bool) -> None:
    """Each record's own QAT switch, as its `main()` and training loop set it."""
    if name == "pr297":  # main() marks the "mlp"/"attn" CastedLinears; the loop sets their _ste_qat
        for mod_name, m in model.named_modules():
            if isinstance(m, rec.CastedLinear):
                m._should_qat = rec._classify_param(mod_name) in ("mlp", "attn")
                m._ste_qat = on and m._should_qat
    else:
        rec.CastedLinear._qat_enabled = on


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def int6_cases() -> list[torch.Tensor]:
    """Integer-draw matrices for PR #297's int6 row quantizer: ordinary rows, rows far below 1/31
    (where #415's 1/31 scale floor would differ), a zero row and a row with a single large entry."""
    g = torch.Generator().manual_seed(2970)
    cases = []
    for rows, cols, step in ((16, 48, 2.0**-9), (8, 64, 2.0**-14), (6, 32, 2.0**-4)):
        u = torch.randint(-2048, 2049, (rows, cols), generator=g).to(torch.float32) * step
        cases.append(u)
    edge = cases[0].clone()
    edge[0] = 0.0
    edge[1, 3] = 9.0
    cases.append(edge)
    return cases


def make(name: str, path: Path) -> dict:
    rec = import_record(name, path, SMALL_ENV[name])
    torch.manual_seed(0)
    model = build_record_gpt(name, rec)
    out: dict = {
        "keys": sorted(model.state_dict()),
        "shapes": shapes(model),
        "init_resid_mix": torch.stack([b.resid_mix.detach().clone() for b in model.blocks]),
        "init_tok_emb_svals": torch.linalg.svdvals(model.tok_emb.weight.detach().double()),
    }
    model.load_state_dict(randomize(model.state_dict(), SEEDS[name]), strict=True)
    g = torch.Generator().manual_seed(1)
    tokens = {T: tuple(torch.randint(0, 128, shape, generator=g) for _ in range(2)) for T, shape in
              ((128, (2, 128)), (2048, (1, 2048)))}  # fmt: skip
    model.eval()
    for T, (x, y) in tokens.items():
        with torch.no_grad():
            out[f"x{T}"], out[f"y{T}"] = x.to(torch.int16), y.to(torch.int16)
            out[f"loss{T}"] = model(x, y)
            logits = model.forward_logits(x)
            out[f"logits{T}"] = logits if T == 128 else logits[:, ::32].contiguous()
            out[f"logsumexp{T}"] = torch.logsumexp(logits, -1)
    qat_switch(name, rec, model, True)
    model.train()
    with torch.no_grad():
        out["qat_train_loss128"] = model(tokens[128][0], tokens[128][1])
    qat_switch(name, rec, model, False)
    if name == "pr297":
        cases = int6_cases()
        out["int6_inputs"] = cases
        out["int6"] = [dict(zip(("q", "scale"), rec.quantize_int6_per_row(w), strict=True)) for w in cases]
    full = import_record(name, path, {})
    with torch.device("meta"):  # shapes only
        out["full_shapes"] = shapes(build_record_gpt(name, full))
    return out


def makers() -> dict[str, Callable[[dict[str, Path]], dict]]:
    return {f"record_{name}_golden": (lambda scripts, n=name: make(n, scripts[n])) for name in RECORDS}


def main(argv: list[str] | None = None) -> int:
    args = golden_parser(__doc__.split("\n\n")[0], FIXTURES).parse_args(argv)
    scripts = {k: Path(v) for k, v in name_pairs(args.record_script, "--record-script", RECORDS).items()}
    commits = name_pairs(args.commit, "--commit", RECORDS)
    failed = False
    for fixture, build in makers().items():
        name = fixture.removeprefix("record_").removesuffix("_golden")
        if name not in scripts:
            print(f"{fixture}: skipped (no --record-script {name}=PATH)")
            continue
        if not scripts[name].is_file():
            raise SystemExit(f"--record-script {name}={scripts[name]}: no such file")
        data = build(scripts)
        path = args.out / f"{fixture}.pt"
        failed |= check_or_write(
            data, path, args.check, "tools/make_ttt_record_goldens.py", RECORDS, [name], scripts, commits
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
