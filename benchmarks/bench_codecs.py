"""Codecs and LQER on one full-size int6 PR #414 payload: bytes and seconds of each, against zstd-22.

The payload is what a #414 run writes: `recipes/pr414.toml`'s model (26,993,756 parameters), its
weights made trained-like with the seeded heavy-tailed noise of benchmarks/bench_export.py (untrained
weights quantize unlike trained ones: orthogonal init, zero-init projections), then the run's export
path: roles from `collect_roles`, the GPTQ-lite plan, the int6_export format, `serialize`.

    python benchmarks/bench_codecs.py [--repeats 1] [--out codecs.json] [--no-plain-brotli]

Codecs, all on the same raw bytes: zstd-22 (built in, the reference), brotli-11 with the byte
shuffle (plugin codec, stride 2) and without it (plain `brotli.compress`, a reference row), lzma
presets 6 and 9 (plugin codec). Each: compressed bytes, encode and decode seconds (median of
`--repeats`), round trip checked. LQER (plugin defaults: rank 4, top 3) on the GPTQ-lite int6
dequantized weights: raw and zstd-22 bytes it adds, and ‖W − Ŵ‖_F before and after for each corrected
matrix and over all int6 matrices. Because zstd-22's output depends on where bytes sit, two more rows: the LQER
payload compressed alone, and the int6 payload compressed behind 64 zero bytes (the size of that layout noise).
Ratios are against zstd-22 measured in the same run.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgolf_plugins import brotli as brotli_plugin  # noqa: E402
from pgolf_plugins import gptq_lite, int6_export, lqer  # noqa: E402
from pgolf_plugins import lzma as lzma_plugin  # noqa: E402

from benchmarks.bench_export import trained_like  # noqa: E402  (the same synthetic weights as that benchmark)
from pgolf_core import build_model, load_recipe  # noqa: E402
from pgolf_core.exporter import (  # noqa: E402
    BUILTIN_CODECS,
    CORRECTIONS_KEY,
    ExportContext,
    TensorPlan,
    serialize,  # noqa: E402
)
from pgolf_core.types import collect_roles  # noqa: E402

RECIPE = ROOT / "recipes" / "pr414.toml"


def versions() -> dict[str, str]:
    """The machine and the libraries whose versions decide the bytes and the seconds."""
    import brotli
    import zstandard

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    lib = ctypes.util.find_library("lzma")
    xz = "?"
    if lib:
        fn = ctypes.CDLL(lib).lzma_version_string
        fn.restype = ctypes.c_char_p
        xz = fn().decode()
    return {
        "cpu": cpu,
        "cores": str(len(__import__("os").sched_getaffinity(0))),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "brotli": brotli.__version__,
        "zstandard": f"{zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})",
        "liblzma": xz,
    }


def payload(seed: int) -> tuple[dict, dict, dict, dict, dict]:
    """(weights, plan, roles, int6 object, report) exactly as a #414 run exports them."""
    recipe = load_recipe(RECIPE)
    model = build_model(recipe)
    weights = trained_like(model, seed)
    roles = collect_roles(model)
    report: dict = {}
    plan = {name: TensorPlan() for name in weights}
    gptq_lite.GptqLite(gptq_lite.Config()).pgolf_export_plan(
        plan=plan, weights=weights, ctx=ExportContext(recipe, roles, report.__setitem__)
    )
    fmt = int6_export.Int6Export(int6_export.Config()).pgolf_export_format(recipe=recipe)
    obj = fmt.quantize(weights, plan, roles, report.__setitem__)
    return weights, plan, roles, obj, report | {"format": fmt}


def measure(encode: Callable[[bytes], bytes], decode: Callable[[bytes], bytes], raw: bytes, repeats: int) -> dict:
    """Bytes, median encode and decode seconds of one codec; the round trip must give `raw` back."""
    enc, dec, blob = [], [], b""
    for _ in range(repeats):
        t0 = time.perf_counter()
        blob = encode(raw)
        enc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = decode(blob)
        dec.append(time.perf_counter() - t0)
        assert back == raw, "round trip differs"
    return {"bytes": len(blob), "encode_s": statistics.median(enc), "decode_s": statistics.median(dec), "blob": blob}


def frob(t: torch.Tensor) -> float:
    return float(t.double().norm())


def lqer_rows(weights: dict, obj: dict, fmt, plan: dict, zstd22: Callable[[bytes], bytes]) -> dict:
    """LQER's payload on the int6 dequantized weights: bytes added and the error it removes."""
    dtypes = {k: v.dtype for k, v in weights.items()}
    deq = fmt.dequantize(obj, dtypes)
    corr = lqer.LqerCorrection(lqer.Config())
    t0 = time.perf_counter()
    pay = corr.encode(weights, deq, plan)
    encode_s = time.perf_counter() - t0
    fixed = corr.apply(deq, pay)
    int6 = [k for k, m in obj["m"].items() if m == {"type": "int6"}]
    per = []
    for name in pay:
        w = weights[name].float()
        before, after = frob(w - deq[name].float()), frob(w - fixed[name].float())
        entry_bytes = sum(t.numel() * t.element_size() for t in pay[name].values())
        kind = obj["m"][name]["type"] if isinstance(obj["m"][name], dict) else obj["m"][name]
        per.append({"name": name, "format": kind, "shape": list(w.shape), "norm_w": frob(w), "err_before": before,
                    "err_after": after, "factor_bytes": entry_bytes})  # fmt: skip
    sq = {"w": 0.0, "before": 0.0, "after": 0.0}
    for name in int6:
        w = weights[name].float()
        sq["w"] += frob(w) ** 2
        sq["before"] += frob(w - deq[name].float()) ** 2
        sq["after"] += frob(w - fixed[name].float()) ** 2
    with_obj = dict(obj)
    with_obj[CORRECTIONS_KEY] = {corr.tag: pay}
    raw_with = serialize(with_obj)
    t0 = time.perf_counter()
    blob_with = zstd22(raw_with)
    zstd_s = time.perf_counter() - t0
    alone = zstd22(serialize(pay))  # the payload by itself: its own bytes, without layout effects
    shifted = zstd22(bytes(64) + serialize(obj))  # the same payload 64 bytes later: zstd-22's layout noise
    return {
        "encode_s": encode_s,
        "zstd22_with_s": zstd_s,
        "raw_with": len(raw_with),
        "zstd22_with": len(blob_with),
        "raw_alone": len(serialize(pay)),
        "zstd22_alone": len(alone),
        "zstd22_shifted": len(shifted),
        "matrices": per,
        "int6_total": {k: math.sqrt(v) for k, v in sq.items()},
        "int6_matrices": len(int6),
    }


def table(res: dict) -> str:
    ref = res["codecs"]["zstd-22"]
    lines = [
        f"Raw `torch.save` payload: {res['raw_bytes']:,} bytes. Repeats: {res['repeats']} (median).",
        "",
        "| codec | bytes | vs zstd-22 | encode (s) | decode (s) | encode vs zstd-22 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["codecs"].items():
        lines.append(
            f"| {name} | {r['bytes']:,} | {r['bytes'] / ref['bytes']:.4f} ({r['bytes'] - ref['bytes']:+,}) | "
            f"{r['encode_s']:.1f} | {r['decode_s']:.2f} | {r['encode_s'] / ref['encode_s']:.2f}x |"
        )
    q = res["lqer"]
    lines += [
        "",
        f"LQER (rank 4, top 3, asymmetric int2/int4) on the int6 dequantized weights: encode {q['encode_s']:.1f} s.",
        "",
        "| matrix | stored as | shape | ‖W‖_F | ‖W − Ŵ‖_F int6 | with LQER | change | factor bytes |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in q["matrices"]:
        lines.append(
            f"| {m['name']} | {m['format']} | {'x'.join(map(str, m['shape']))} | {m['norm_w']:.2f} | "
            f"{m['err_before']:.4f} | {m['err_after']:.4f} | {m['err_after'] / m['err_before'] - 1:+.2%} | "
            f"{m['factor_bytes']:,} |"
        )
    t = q["int6_total"]
    lines += [
        f"| all {q['int6_matrices']} int6 matrices | int6 | | {t['w']:.2f} | {t['before']:.4f} "
        f"({t['before'] / t['w']:.4%} of ‖W‖) | {t['after']:.4f} ({t['after'] / t['w']:.4%}) | "
        f"{t['after'] / t['before'] - 1:+.3%} | |",
        "",
        "| LQER bytes | without | with | added |",
        "|---|---:|---:|---:|",
        f"| raw payload | {res['raw_bytes']:,} | {q['raw_with']:,} | {q['raw_with'] - res['raw_bytes']:+,} |",
        f"| zstd-22 | {ref['bytes']:,} | {q['zstd22_with']:,} | {q['zstd22_with'] - ref['bytes']:+,} |",
        f"| the LQER payload alone, `serialize` / + zstd-22 | | | {q['raw_alone']:,} / {q['zstd22_alone']:,} |",
        f"| layout noise: zstd-22 of 64 zero bytes + the int6 payload | {ref['bytes']:,} | "
        f"{q['zstd22_shifted']:,} | {q['zstd22_shifted'] - ref['bytes']:+,} |",
    ]
    return "\n".join(lines)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1, help="encode/decode repeats per codec (median reported)")
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    ap.add_argument("--seed", type=int, default=414, help="seed of the trained-like noise")
    ap.add_argument("--no-plain-brotli", action="store_true", help="skip the brotli-11 row without the shuffle")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats: expected 1 or more")

    t0 = time.perf_counter()
    weights, plan, _roles, obj, report = payload(args.seed)
    fmt = report.pop("format")
    raw = serialize(obj)
    quantize_s = time.perf_counter() - t0
    n_params = sum(t.numel() for t in weights.values())
    print(f"{n_params:,} parameters; payload {len(raw):,} raw bytes in {quantize_s:.1f} s", flush=True)

    import brotli

    zstd = next(c for c in BUILTIN_CODECS if c.name == "zstd")
    bro = brotli_plugin.Brotli(brotli_plugin.Config()).pgolf_codecs()[0]
    xz = lzma_plugin.Lzma(lzma_plugin.Config()).pgolf_codecs()[0]
    codecs: dict[str, tuple] = {
        "zstd-22": (lambda b: zstd.encode(b, 22), zstd.decode),
        "shuffle + brotli-11": (lambda b: bro.encode(b, 11), bro.decode),
        "brotli-11 (no shuffle)": (lambda b: brotli.compress(b, quality=11), brotli.decompress),
        "lzma-6": (lambda b: xz.encode(b, 6), xz.decode),
        "lzma-9": (lambda b: xz.encode(b, 9), xz.decode),
    }
    if args.no_plain_brotli:
        del codecs["brotli-11 (no shuffle)"]
    results = {}
    for name, (enc, dec) in codecs.items():
        results[name] = measure(enc, dec, raw, args.repeats)
        r = results[name]
        print(f"{name}: {r['bytes']:,} bytes, encode {r['encode_s']:.1f} s, decode {r['decode_s']:.2f} s", flush=True)
    lq = lqer_rows(weights, obj, fmt, plan, codecs["zstd-22"][0])
    for r in results.values():
        r.pop("blob")
    res = {
        "machine": versions(),
        "command": " ".join(["python", "benchmarks/bench_codecs.py", *sys.argv[1:]]),
        "seed": args.seed,
        "parameters": n_params,
        "repeats": args.repeats,
        "quantize_s": quantize_s,
        "raw_bytes": len(raw),
        "gptq_lite": report.get("gptq_lite/percentiles"),
        "tensors": report.get("int6_export/tensors"),
        "codecs": results,
        "lqer": lq,
    }
    res["table"] = table(res)
    print(res["table"])
    print(json.dumps(res["machine"]))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
