"""The ablation report from the finished runs of a directory: ablation.json, .csv, .md, .png.

Every Δ is variant − reference (`full`): positive means the variant scores worse, i.e. what it
turned off was worth that much. The p-value is one-sided Welch (variant worse than reference).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from pgolf_core.ablate import stats
from pgolf_core.ablate.execute import finished, run_dir
from pgolf_core.errors import PgolfError

CHALLENGE_NATS, CHALLENGE_ALPHA = 0.005, 0.01


def _summaries(plan: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {v: [] for v in plan["variants"]}
    for r in plan["runs"]:
        if finished(r):
            out[r["variant"]].append(json.loads((run_dir(r) / "summary.json").read_text()))
    return out


def build(plan: dict[str, Any], alpha: float) -> dict[str, Any]:
    runs = _summaries(plan)
    ref_name = plan["reference"]
    ref = runs.get(ref_name, [])
    ref_bpb = [s["score_val_bpb"] for s in ref]
    bpt = [s.get("manifest", {}).get("data", {}).get("val_bytes_per_token") for s in ref]
    bpt = [b for b in bpt if b]
    # 0.005 nats per token in bits per byte: / ln 2 (bits) / bytes per token
    challenge_bpb = CHALLENGE_NATS / math.log(2) / (sum(bpt) / len(bpt)) if bpt else None
    ref_bytes = stats.mean([s["artifact_bytes"] for s in ref]) if ref else None
    rows = []
    for name, ss in runs.items():
        if not ss:
            rows.append({"variant": name, "n": 0})
            continue
        bpb = [s["score_val_bpb"] for s in ss]
        w = stats.welch(ref_bpb, bpb, alpha) if ref_bpb and name != ref_name else {}
        w01 = stats.welch(ref_bpb, bpb, CHALLENGE_ALPHA) if ref_bpb and name != ref_name else {}
        nbytes = stats.mean([s["artifact_bytes"] for s in ss])
        p = w.get("p")
        rows.append(
            {
                "variant": name,
                "n": len(ss),
                "val_bpb_mean": stats.mean(bpb),
                "val_bpb_std": stats.std(bpb),
                "delta": w.get("delta"),
                "p": p,
                "min_detectable_alpha": w.get("min_detectable"),
                "min_detectable_0.01": w01.get("min_detectable"),
                "significant": p is not None and p < alpha,
                "clears_challenge": bool(
                    challenge_bpb is not None
                    and p is not None
                    and p < CHALLENGE_ALPHA
                    and (w["delta"] or 0) >= challenge_bpb
                ),
                "artifact_bytes": nbytes,
                "delta_bytes": None if ref_bytes is None or name == ref_name else nbytes - ref_bytes,
                "step_ms": stats.mean([s["step_ms"] for s in ss]),
                "steps": stats.mean([s["steps"] for s in ss]),
                "eval_seconds": stats.mean([s["eval_seconds"] for s in ss]),
            }
        )
    return {
        "schema": "pgolf.ablation/1",
        "compare": plan["compare"],
        "reference": ref_name,
        "metric": "score_val_bpb (sliding eval if configured, else int round trip)",
        "alpha": alpha,
        "challenge_threshold": {"nats": CHALLENGE_NATS, "alpha": CHALLENGE_ALPHA, "bpb": challenge_bpb},
        "skipped": plan["skipped"],
        "seeds": plan["seeds"],
        "rows": rows,
    }


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def markdown(rep: dict[str, Any]) -> str:
    a = rep["alpha"]
    ct = rep["challenge_threshold"]
    thr = f"{ct['bpb']:.4f} bpb" if ct["bpb"] else f"{ct['nats']} nats on val_loss (no bytes-per-token in summaries)"
    lines = [
        f"Compared at **{rep['compare']}**; {len(rep['seeds'])} seeds {rep['seeds']}; "
        f"Δ = variant − `{rep['reference']}` ({rep['metric']}); "
        f"p one-sided Welch; MDΔ = smallest Δ detectable with 80% power.",
        f"Thresholds: the challenge's 0.005 nats ({thr}) at p < 0.01 (✓ = cleared), "
        f"and p < {a} (--alpha; * = not significant).",
        "",
        f"| variant | n | val_bpb | Δ | p | MDΔ@0.01 | MDΔ@{a} | artifact bytes | Δbytes | ms/step | steps | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        if not r["n"]:
            lines.append(f"| {r['variant']} | 0 | (no finished run) |" + " |" * 9)
            continue
        flag = "" if r["delta"] is None else (" ✓" if r["clears_challenge"] else "" if r["significant"] else " *")
        lines.append(
            f"| {r['variant']} | {r['n']} | {r['val_bpb_mean']:.4f} ± {r['val_bpb_std']:.4f} "
            f"| {_f(r['delta'], '+.4f')}{flag} "
            f"| {_f(r['p'], '.3g')} | {_f(r['min_detectable_0.01'], '.4f')} | {_f(r['min_detectable_alpha'], '.4f')} "
            f"| {r['artifact_bytes']:,.0f} | {_f(r['delta_bytes'], '+,.0f')} | {r['step_ms']:.1f} | {r['steps']:.0f} "
            f"| {r['eval_seconds']:.1f} |"
        )
    for name, why in rep["skipped"].items():
        lines.append(f"\nskipped {name}: {why}")
    return "\n".join(lines) + "\n"


def write(rep: dict[str, Any], out: Path, png: bool | None) -> list[str]:
    """Write the report files; `png` None = if matplotlib is installed, True = required."""
    (out / "ablation.json").write_text(json.dumps(rep, indent=2))
    (out / "ablation.md").write_text(markdown(rep))
    keys = [k for k in rep["rows"][0] if k != "variant"] if rep["rows"] else []
    with open(out / "ablation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", *keys, "compare"])
        for r in rep["rows"]:
            w.writerow([r["variant"], *[r.get(k) for k in keys], rep["compare"]])
    written = ["ablation.json", "ablation.csv", "ablation.md"]
    if png is False:
        return written
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if png:
            raise PgolfError("--png needs matplotlib: pip install 'pgolf[ablate]'") from None
        print("ablate: matplotlib not installed, no ablation.png (pip install 'pgolf[ablate]')", file=sys.stderr)
        return written
    rows = [r for r in rep["rows"] if r.get("delta") is not None]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2), dpi=80)
    ys = range(len(rows))
    errs = [math.sqrt(r["val_bpb_std"] ** 2 + 0.0) for r in rows]
    ax.barh(
        list(ys),
        [r["delta"] for r in rows],
        xerr=errs,
        color=["#4c72b0" if r["significant"] else "#bbbbbb" for r in rows],
    )
    ax.set_yticks(list(ys), [r["variant"] for r in rows])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"Δ val_bpb vs {rep['reference']} (± std; grey: p ≥ {rep['alpha']})")
    ax.set_title(f"pgolf ablate, {rep['compare']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "ablation.png")
    plt.close(fig)
    return written + ["ablation.png"]
