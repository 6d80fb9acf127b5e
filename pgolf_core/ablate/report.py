"""The ablation report from the finished runs of a directory: ablation.json, .csv, .md, .png.

Every Δ is variant − reference (`full`), and lower val_bpb is better: Δ > 0 means the variant scores
worse (what it toggled helped), Δ < 0 that it scores better. The p-value is two-sided Welch, so a
significant Δ of either sign is flagged, never greyed out for pointing the unexpected way.
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
from pgolf_core.ablate.plan import MIN_SMOKE_STEPS

CHALLENGE_NATS, CHALLENGE_ALPHA = 0.005, 0.01
NEEDS_MATPLOTLIB = "--png needs matplotlib: pip install 'pgolf[ablate]'"
LOWER_IS_BETTER = "lower val_bpb is better: Δ > 0 = the variant scores worse (what it toggled helped), Δ < 0 = better"
COLOURS = {"variant worse": "#c44e52", "variant better": "#55a868", "not significant": "#bbbbbb"}


def _summaries(plan: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {v: [] for v in plan["variants"]}
    for r in plan["runs"]:
        if finished(r):
            out[r["variant"]].append(json.loads((run_dir(r) / "summary.json").read_text()))
    return out


def _zeroed(summaries: list[dict[str, Any]]) -> list[str] | None:
    """Names of the tensors any run exported as all zeros; None when no summary says (runs before the count)."""
    known = [s["zeroed_tensors"] for s in summaries if "zeroed_tensors" in s]
    return sorted(set().union(*known)) if known else None


def build(plan: dict[str, Any], alpha: float) -> dict[str, Any]:
    runs = _summaries(plan)
    ref_name = plan["reference"]
    ref = runs.get(ref_name, [])
    ref_bpb = [s["score_val_bpb"] for s in ref]
    bpt = [b for s in ref if (b := s.get("manifest", {}).get("data", {}).get("val_bytes_per_token"))]
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
        delta = w.get("delta")
        zeroed = _zeroed(ss)
        clears = (
            challenge_bpb is not None and p is not None and p < CHALLENGE_ALPHA and abs(delta or 0) >= challenge_bpb
        )
        rows.append(
            {
                "variant": name,
                "n": len(ss),
                "val_bpb_mean": stats.mean(bpb),
                "val_bpb_std": stats.std(bpb),
                "delta": delta,
                "delta_se": w.get("se"),
                "p": p,
                "verdict": None if delta is None else _verdict(delta, p is not None and p < alpha),
                "min_detectable_alpha": w.get("min_detectable"),
                "min_detectable_0.01": w01.get("min_detectable"),
                "clears_challenge": clears,
                "zeroed_tensors": None if zeroed is None else len(zeroed),
                "artifact_bytes": nbytes,
                "delta_bytes": None if ref_bytes is None or name == ref_name else nbytes - ref_bytes,
                "step_ms": stats.mean([s["step_ms"] for s in ss]),
                "steps": stats.mean([s["steps"] for s in ss]),
                "eval_seconds": stats.mean([s["eval_seconds"] for s in ss]),
            }
        )
    return {
        "schema": "pgolf.ablation/2",
        "recipe": plan.get("recipe"),
        "compare": plan["compare"],
        "reference": ref_name,
        "metric": "score_val_bpb (sliding eval if configured, else int round trip)",
        "alpha": alpha,
        "challenge_threshold": {"nats": CHALLENGE_NATS, "alpha": CHALLENGE_ALPHA, "bpb": challenge_bpb},
        "skipped": plan["skipped"],
        "seeds": plan["seeds"],
        "rows": rows,
    }


def _verdict(delta: float, significant: bool) -> str:
    if not significant:
        return "not significant"
    return "variant worse" if delta > 0 else "variant better"


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _zeroed_cell(n: int | None) -> str:
    return "?" if n is None else f"⚠ {n}" if n else "0"


def markdown(rep: dict[str, Any]) -> str:
    a = rep["alpha"]
    ct = rep["challenge_threshold"]
    thr = f"{ct['bpb']:.4f} bpb" if ct["bpb"] else f"{ct['nats']} nats on val_loss (no bytes-per-token in summaries)"
    cols = ["variant", "n", "val_bpb", "Δ", "p", "verdict", "MDΔ@0.01", f"MDΔ@{a}", "zeroed"]
    cols += ["artifact bytes", "Δbytes", "ms/step", "steps", "eval s"]
    lines = [
        f"`{rep['recipe']}` compared at **{rep['compare']}**; {len(rep['seeds'])} seeds {rep['seeds']}; "
        f"Δ = variant − `{rep['reference']}` ({rep['metric']}); {LOWER_IS_BETTER}.",
        f"p: two-sided Welch (Δ ≠ 0), verdict at p < {a} (--alpha); MDΔ: smallest |Δ| detectable with 80% power; "
        f"✓: |Δ| clears the challenge's 0.005 nats ({thr}) at p < 0.01; zeroed: tensors exported as all zeros.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rep["rows"]:
        if not r["n"]:
            lines.append(f"| {r['variant']} | 0 | (no finished run) |" + " |" * (len(cols) - 3))
            continue
        lines.append(
            f"| {r['variant']} | {r['n']} | {r['val_bpb_mean']:.4f} ± {r['val_bpb_std']:.4f} "
            f"| {_f(r['delta'], '+.4f')}{' ✓' if r['clears_challenge'] else ''} | {_f(r['p'], '.3g')} "
            f"| {r['verdict'] or '–'} | {_f(r['min_detectable_0.01'], '.4f')} | {_f(r['min_detectable_alpha'], '.4f')} "
            f"| {_zeroed_cell(r['zeroed_tensors'])} | {r['artifact_bytes']:,.0f} | {_f(r['delta_bytes'], '+,.0f')} "
            f"| {r['step_ms']:.1f} | {r['steps']:.0f} | {r['eval_seconds']:.1f} |"
        )
    if zeroed := [f"{r['variant']} {r['zeroed_tensors']}" for r in rep["rows"] if r.get("zeroed_tensors")]:
        lines.append(
            f"\n⚠ tensors exported as all zeros ({', '.join(zeroed)}): the scored model lacks them, so Δ cannot show "
            f"what acts in them; raise --fixed-steps (--smoke: at least {MIN_SMOKE_STEPS}). Names: each summary.json."
        )
    for name, why in rep["skipped"].items():
        lines.append(f"\nskipped {name}: {why}")
    return "\n".join(lines) + "\n"


def write(rep: dict[str, Any], out: Path, png: bool | None) -> list[str]:
    """Write the report files; `png` None or True = if matplotlib is installed (the CLI refuses --png without it
    before anything runs)."""
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
        print(f"ablate: no ablation.png ({NEEDS_MATPLOTLIB})", file=sys.stderr)
        return written
    _plot(plt, rep, out / "ablation.png")
    return written + ["ablation.png"]


def _plot(plt: Any, rep: dict[str, Any], path: Path) -> None:
    """Δ per variant ± its standard error, labelled with its value and n, coloured by a significant Δ's
    direction, hatched where the scored model lost tensors to all-zero export."""
    rows = [r for r in rep["rows"] if r.get("delta") is not None]
    ref = next((r for r in rep["rows"] if r["variant"] == rep["reference"] and r["n"]), None)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 2.2), dpi=100)
    ys = list(range(len(rows)))[::-1]  # the first variant on top, as in the table
    errs = [r["delta_se"] or 0.0 for r in rows]
    bars = ax.barh(ys, [r["delta"] for r in rows], xerr=errs, capsize=2, edgecolor="white")
    for bar, y, err, r in zip(bars, ys, errs, rows, strict=True):
        bar.set_facecolor(COLOURS[r["verdict"]])
        bar.set_hatch("//" if r["zeroed_tensors"] else "")
        zeroed = f", ⚠ {r['zeroed_tensors']} tensors zeroed" if r["zeroed_tensors"] else ""
        end = r["delta"] + math.copysign(err, r["delta"])  # past the error bar
        label = f" {r['delta']:+.4f} (n={r['n']}{zeroed}) "
        ax.text(end, y, label, va="center", ha="left" if end >= 0 else "right", fontsize=8)
    ax.set_yticks(ys, [r["variant"] for r in rows])
    ax.axvline(0, color="black", lw=0.8)
    ax.margins(x=0.5)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c, label=k) for k, c in COLOURS.items()], fontsize=8)
    ax.set_xlabel(
        f"Δ val_bpb vs {rep['reference']} ± SE (lower is better: left of 0 = the variant beats {rep['reference']})"
    )
    full = f"{rep['reference']} {ref['val_bpb_mean']:.4f} ± {ref['val_bpb_std']:.4f}" if ref else "no reference"
    ax.set_title(
        f"pgolf ablate {Path(rep['recipe'] or '?').name}: {rep['compare']}, seeds {rep['seeds']}\n{full}; "
        f"colour: two-sided Welch p < {rep['alpha']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
