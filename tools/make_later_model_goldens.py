"""Regenerate tests/fixtures/later_model_golden.pt from two later records' own code, and stamp it.

The fixture holds what PR #549's LeakyReLU(0.5)² `MLP` and PR #1394's SDClip quantizer produce on
small inputs; pgolf's leaky_relu2 and sdclip (+ int6_export) plugins must match it
(tests/plugins/test_leaky_relu2.py, tests/plugins/test_sdclip.py). The record scripts are read from
paths the user gives (files of openai/parameter-golf at the PR heads below; no record code is copied
into this repository) and are never run: only the named classes/functions are taken from each
script's syntax tree and defined in a namespace of their own (PR #1394's lzma + base85 shim is
decompressed first, never executed).

- leaky_relu2: PR #549 `MLP(dim, mlp_mult).forward(x, up_w, down_w)` (its weights come from parameter
  banks, so they are arguments), fp32, on integer-draw inputs; its output and the gradients of
  sum(out · g) with respect to x, up_w and down_w.
- sdclip: PR #1394 `gptq_mixed_quantize(state_dict, hessians, Hyperparameters())` with every Hessian
  the identity, and `gptq_quantize_weight(w, I, clip_sigmas=k, clip_range=r)` for other (k, r). With
  H = I the record's GPTQ has no error feedback (its inverse Cholesky factor is diagonal), so its
  integers are round-to-nearest on its SDClip grid, which is what pgolf computes (pgolf has no Hessian
  calibration). The record's clip is k · std(row) in fp32, rounded to an fp16 scale: a torch.std that
  sums in another order (another CPU's vector unit) could move a value that sits next to an fp16
  rounding boundary, so the weights' seed is the first one from `SEED` whose every row lies at least
  `MARGIN_ULPS` fp32 ulps from such a boundary (checked here, recorded in the fixture).

    R=PG/records/track_10min_16mb  # each file as of its PR head below (git show SHA:PATH > FILE)
    python tools/make_later_model_goldens.py \\
      --record-script leaky_relu2=$R/2026-03-23_LeakyReLU_LegalTTT_ParallelMuon/train_gpt.py \\
      --record-script sdclip=$R/2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2/train_gpt.py \\
      [--commit leaky_relu2=b08d72a9...] [--check]

PR heads: #549 b08d72a96e98cac8add0543982fccd35bc8f4f4d, #1394 f4fa11fe7671036dd1e3b945e405750f21ddecfc.
`--check` writes nothing: it regenerates and compares every value (stamps aside) with the committed
fixture, bit for bit, and exits 1 on any difference.
"""

from __future__ import annotations

import ast
import collections
import os
import re
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.plugins import test_leaky_relu2 as leaky_tests  # noqa: E402
from tests.plugins import test_sdclip as sdclip_tests  # noqa: E402
from tools.make_export_goldens import _simple, record_source, top_level  # noqa: E402
from tools.make_goldens import check_or_write, golden_parser, name_pairs  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "later_model_golden.pt"
RECORDS = {  # name -> (PR, folder under records/track_10min_16mb/)
    "leaky_relu2": ("#549", "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon"),
    "sdclip": ("#1394", "2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2"),
}
NEEDS = {"leaky_relu2": ("MLP",), "sdclip": ("Hyperparameters", "gptq_quantize_weight", "gptq_mixed_quantize")}

SEED = 1394  # the first seed tried for the sdclip weights
MARGIN_ULPS = 64
MLP_CASES, MLP_SEED = leaky_tests.MLP_CASES, leaky_tests.MLP_SEED
SDCLIP_SHAPES, DIRECT_CASES = sdclip_tests.SDCLIP_SHAPES, sdclip_tests.DIRECT_CASES


def record_namespace(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The script's constants and the named top-level classes/functions, defined (not run) with the
    modules they use; `os.environ` is empty, so `Hyperparameters` takes the script's defaults."""
    body = top_level(record_source(path))
    defs = {n.name: n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    missing = [n for n in names if n not in defs]
    if missing:
        raise SystemExit(f"{path}: no {', '.join(missing)} (not the record script this golden needs)")
    chosen = [n for n in body if _simple(n)] + [defs[n] for n in names]
    ns: dict[str, Any] = {
        "__name__": "record",
        "torch": torch,
        "nn": nn,
        "F": F,
        "Tensor": Tensor,
        "re": re,
        "collections": collections,
        "uuid": uuid,
        "os": types.SimpleNamespace(environ={}, path=os.path),
        "log": lambda *args, **kwargs: None,
    }
    exec(compile(ast.Module(body=chosen, type_ignores=[]), str(path), "exec"), ns)
    return ns


# ------------------------------------------------------------------ leaky_relu2 (PR #549)


def make_leaky(ns: dict[str, Any]) -> dict:
    out: dict = {}
    for i, (case, (batch, seq, dim, mult)) in enumerate(MLP_CASES.items()):
        t = leaky_tests.mlp_inputs(batch, seq, dim, mult, MLP_SEED + i)
        mlp = ns["MLP"](dim, mult)
        x, up, down = (t[k].clone().requires_grad_(True) for k in ("x", "up_w", "down_w"))
        y = mlp(x, up, down)
        (y * t["g"]).sum().backward()
        out[case] = {
            "shape": (batch, seq, dim, mult),
            "seed": MLP_SEED + i,
            "inputs": {k: sdclip_tests.digest(v) for k, v in t.items()},
            "out": y.detach().clone(),
            "grad_x": x.grad.clone(),
            "grad_up_w": up.grad.clone(),
            "grad_down_w": down.grad.clone(),
        }
    return out


# ------------------------------------------------------------------ sdclip (PR #1394)


def ulps_to_fp16_boundary(v: Tensor) -> Tensor:
    """Per value: fp32 ulps from `v` (positive, fp32) to the nearest midpoint between fp16 values."""
    h = v.to(torch.float16)
    lo, hi = torch.nextafter(h, torch.zeros_like(h)).float(), torch.nextafter(h, torch.full_like(h, 65504)).float()
    hf = h.float()
    mids = torch.stack(((hf + lo) / 2, (hf + hi) / 2))  # exact in fp32 (fp16 values have 11 bits)
    ulp = (torch.nextafter(v, torch.full_like(v, float("inf"))) - v).abs()
    return ((mids - v).abs() / ulp).amin(dim=0)


def clip_margin(weights: dict[str, Tensor], ks: dict[str, tuple[float, int]]) -> float:
    """The smallest distance (fp32 ulps) of any row's k·std/qmax from an fp16 rounding boundary."""
    worst = float("inf")
    for name, (k, r) in ks.items():
        v = k * weights[name].float().std(dim=1) / r
        worst = min(worst, float(ulps_to_fp16_boundary(v).min()))
    return worst


def _record_ks(h: Any) -> dict[str, tuple[float, int]]:
    out = {}
    for name, shape in SDCLIP_SHAPES.items():
        if len(shape) == 2 and shape[0] * shape[1] > 65536:
            emb = "tok_emb" in name
            bits = h.embed_bits if emb else h.matrix_bits
            out[name] = (h.embed_clip_sigmas if emb else h.matrix_clip_sigmas, 2 ** (bits - 1) - 1)
    return out


def make_sdclip(ns: dict[str, Any]) -> dict:
    h = ns["Hyperparameters"]()
    ks = _record_ks(h)
    seed = next(s for s in range(SEED, SEED + 1000) if clip_margin(sdclip_tests.sdclip_weights(s), ks) >= MARGIN_ULPS)
    weights = sdclip_tests.sdclip_weights(seed)
    hessians = {name: torch.eye(SDCLIP_SHAPES[name][1]) for name in ks}
    result, meta = ns["gptq_mixed_quantize"](weights, hessians, h)
    direct_ks = {case: (k, r) for case, (_, k, r) in DIRECT_CASES.items()}
    dseed = next(
        s for s in range(SEED, SEED + 1000) if clip_margin(sdclip_tests.direct_weights(s), direct_ks) >= MARGIN_ULPS
    )
    dweights = sdclip_tests.direct_weights(dseed)
    direct = {}
    for case, (shape, k, r) in DIRECT_CASES.items():
        q, s = ns["gptq_quantize_weight"](dweights[case], torch.eye(shape[1]), clip_sigmas=k, clip_range=r)
        direct[case] = {"w": sdclip_tests.digest(dweights[case]), "clip_sigmas": k, "clip_range": r, "q": q, "scale": s}
    return {
        "hparams": {
            "matrix_bits": h.matrix_bits,
            "embed_bits": h.embed_bits,
            "matrix_clip_sigmas": h.matrix_clip_sigmas,
            "embed_clip_sigmas": h.embed_clip_sigmas,
        },
        "seed": seed,
        "weights": {k: sdclip_tests.digest(v) for k, v in weights.items()},
        "result": result,
        "meta": meta,
        "margin_ulps": min(clip_margin(weights, ks), clip_margin(dweights, direct_ks)),
        "direct_seed": dseed,
        "direct": direct,
    }


# ------------------------------------------------------------------ CLI


def build(scripts: dict[str, Path]) -> dict:
    return {
        "leaky_relu2": make_leaky(record_namespace(scripts["leaky_relu2"], NEEDS["leaky_relu2"])),
        "sdclip": make_sdclip(record_namespace(scripts["sdclip"], NEEDS["sdclip"])),
    }


def main(argv: list[str] | None = None) -> int:
    args = golden_parser(__doc__.split("\n\n")[0], FIXTURE).parse_args(argv)
    scripts = {k: Path(v) for k, v in name_pairs(args.record_script, "--record-script", RECORDS).items()}
    missing = sorted(set(RECORDS) - set(scripts))
    if missing:
        raise SystemExit(f"missing --record-script for {', '.join(missing)}")
    for name, path in scripts.items():
        if not path.is_file():
            raise SystemExit(f"--record-script {name}={path}: no such file")
    data = build(scripts)
    commits = name_pairs(args.commit, "--commit", RECORDS)
    failed = check_or_write(
        data, args.out, args.check, "tools/make_later_model_goldens.py", RECORDS, list(RECORDS), scripts, commits
    )
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
