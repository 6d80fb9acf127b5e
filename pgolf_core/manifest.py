"""Run records: the summary (`summary.json`, schema in docs/summary.md), the provenance manifest,
the resolved recipe, code-byte accounting, and the up-front warning for full-scale CPU runs."""

from __future__ import annotations

import inspect
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf_core.data.bpb import tokenizer_sha256
from pgolf_core.data.shards import read_shard
from pgolf_core.evaluation import token_bytes
from pgolf_core.registry import version_order
from pgolf_core.types import PGOLF_VERSION

CORE_DIR = Path(__file__).resolve().parent
# Tools that are not part of a training run's code path (data preparation, the CLI front end, the kit).
NOT_COUNTED = ("cli.py", "data/commands.py", "data/sample.py", "data/build.py", "data/fineweb.py", "ablate/",
               "testing.py", "authoring.py")  # fmt: skip


def code_files(plugins: list[Any]) -> list[Path]:
    """The source files a submission would need: the core's training path plus enabled plugins.

    The challenge counts the bytes of one `train_gpt.py`; pgolf counts the UTF-8 bytes of the
    core modules used by a run and of each enabled plugin's module (data-preparation tools and
    the CLI front end and `pgolf ablate`, which drives runs from outside, are excluded), an upper
    bound on what an exported single script needs.
    """
    core = [p for p in sorted(CORE_DIR.rglob("*.py")) if not p.relative_to(CORE_DIR).as_posix().startswith(NOT_COUNTED)]
    extra = {Path(inspect.getfile(type(p))).resolve() for p in plugins}
    return core + sorted(extra - set(core))


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CORE_DIR, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


UNIGRAM_TRAIN_TOKENS = 20_000_000  # the unigram reference counts this many train tokens at most


def unigram_bpb(train_files: list[Path], val_tokens: torch.Tensor, tables: Any) -> float:
    """BPB of a unigram model (add-one smoothed counts from the first `UNIGRAM_TRAIN_TOKENS` train tokens)
    on the val targets: the floor any trained model must clear."""
    vocab = int(tables.base_bytes.numel())
    counts = np.ones(vocab, dtype=np.float64)
    seen = 0
    for f in train_files:
        toks = read_shard(f).numpy()[: UNIGRAM_TRAIN_TOKENS - seen]
        counts += np.bincount(toks.astype(np.int64), minlength=vocab)[:vocab]
        seen += toks.size
        if seen >= UNIGRAM_TRAIN_TOKENS:
            break
    logp = np.log(counts / counts.sum())
    val = val_tokens.to(torch.int64)
    n_bytes = token_bytes(val[:-1], val[1:], tables.to("cpu")).sum().item()  # an exact integer sum
    return float(-logp[val[1:].numpy()].sum() / (math.log(2) * n_bytes))


def summarize(run: Any, pre: Any, roundtrip: Any, sliding: Any, written: Any, code_bytes: int, seconds: dict) -> dict:
    """The summary of a finished `train.Run` (schema in docs/summary.md); `seconds` holds the eval
    and export times."""
    recipe, env, data, steps, train_seconds = run.recipe, run.env, run.data, run.steps, run.train_seconds
    total_bytes, score = written.model_bytes + code_bytes, (sliding or roundtrip).val_bpb
    unigram = unigram_bpb(data.train_files, data.val_tokens.cpu(), data.tables)
    return {
        "schema": "pgolf.summary/1", "status": "finished", "name": recipe.run.name, "seed": recipe.run.seed,
        "val_loss": pre.val_loss, "val_bpb": pre.val_bpb,
        "roundtrip_val_loss": roundtrip.val_loss, "roundtrip_val_bpb": roundtrip.val_bpb,
        "sliding_val_loss": sliding.val_loss if sliding else None,
        "sliding_val_bpb": sliding.val_bpb if sliding else None, "score_val_bpb": score, "unigram_val_bpb": unigram,
        "zeroed_tensors": run.zeroed, "warnings": health_warnings(score, unigram, run.zeroed, run.step_times),
        "artifact_bytes": total_bytes, "model_bytes": written.model_bytes, "code_bytes": code_bytes,
        "artifact_limit_bytes": recipe.export.artifact_limit_bytes,
        "over_limit": total_bytes > recipe.export.artifact_limit_bytes, "artifact_format": written.label,
        "model_params": run.n_params, "steps": steps, "step_ms": 1000.0 * train_seconds / max(steps, 1),
        "train_seconds": train_seconds, "eval_seconds": seconds["eval"], "export_seconds": seconds["export"],
        "roundtrip_eval_seconds": roundtrip.seconds, "sliding_eval_seconds": sliding.seconds if sliding else None,
        "eval_compliant": not run.noncompliance, "eval_noncompliance": run.noncompliance or None,
        "eval_seconds_8xh100": seconds["eval"] * env.world_size / 8 if env.is_cuda else None,  # as if these were H100s
        "total_seconds": time.perf_counter() - run.t_start,
        "plugins": [{"name": p.name, **version_order(p)} for p in run.plugins.ordered],
        "plugin_reports": run.state.reports,
        "manifest": {
            "git_sha": git_sha(), "recipe_sha256": recipe.sha256(), "recipe_source": recipe.source,
            "pgolf_version": PGOLF_VERSION,
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(env.device) if env.is_cuda else platform.processor() or "cpu",
            "device_count": env.world_size,
            "data": {
                "train_shards": len(data.train_files), "train_dir": str(data.train_files[0].parent),
                "val_tokens": int(data.val_tokens.numel() - 1), "tokenizer": str(data.tokenizer_path),
                "tokenizer_sha256": tokenizer_sha256(data.tokenizer_path),
                "val_bytes_per_token": float(roundtrip.bytes / max(roundtrip.tokens, 1)),
            },
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }  # fmt: skip


def health_warnings(score: float, unigram: float, zeroed: list[str], step_ms: list[float]) -> list[str]:
    """What makes a finished run's numbers misleading, each in one line (in the summary, log and console)."""
    out = []
    if score > unigram:
        out.append(f"score {score:.4f} bpb is worse than the unigram reference {unigram:.4f}: too few steps to learn")
    if zeroed:
        out.append(f"{len(zeroed)} tensors exported as all zeros (the scored model lacks them): train more steps")
    median = sorted(step_ms)[len(step_ms) // 2] if step_ms else 0.0
    if slow := [t for t in step_ms if t > 10 * median]:
        out.append(
            f"{len(slow)} steps took over 10x the median step ({max(slow):.0f} vs {median:.0f} ms): the machine was "
            "busy, so times (and a result capped by wallclock) are not comparable"
        )
    return out


def resolved_recipe_text(recipe: Any, plugins: list[Any], summary: dict[str, Any]) -> str:
    header = [
        f"# Resolved recipe of {recipe.source} (defaults filled in, overrides applied).",
        f"# git_sha: {summary['manifest']['git_sha']}",
        f"# recipe_sha256: {summary['manifest']['recipe_sha256']}",
        "# hook order: " + (", ".join(f"{p.name} {getattr(p, 'version', '?')}" for p in plugins) or "(no plugins)"),
        *[f"# command-line variant: {', '.join(recipe.variant)} (already applied below)"] * bool(recipe.variant),
        "",
    ]
    return "\n".join(header) + recipe.to_toml()


def print_summary(summary: dict[str, Any], log: Any, out: Path) -> None:
    """The run's last lines: every score, the one that counts marked, the warnings, where the files are."""
    s, h100, sliding = summary, summary["eval_seconds_8xh100"] or 0.0, summary["sliding_val_bpb"] is not None
    lines = [
        "",
        "=" * 60,
        f"summary: {s['name']} seed {s['seed']}  ({s['steps']} steps, {s['step_ms']:.1f} ms/step)",
        f"  val_bpb (pre-export)      {s['val_bpb']:.4f}   val_loss {s['val_loss']:.4f}",
        f"  val_bpb (round trip)      {s['roundtrip_val_bpb']:.4f}   ({s['artifact_format']})"
        + " <- SCORE" * (not sliding),
        *([f"  val_bpb (sliding window)  {s['sliding_val_bpb']:.4f}   <- SCORE"] if sliding else []),
        f"  unigram baseline val_bpb  {s['unigram_val_bpb']:.4f}",
        f"  artifact {s['artifact_bytes']:,} bytes = model {s['model_bytes']:,} + code {s['code_bytes']:,}"
        f"  (limit {s['artifact_limit_bytes']:,}{', OVER' if s['over_limit'] else ''})",
        f"  train {s['train_seconds']:.1f} s, eval {s['eval_seconds']:.1f} s",
        *([f"  eval NOT compliant: {s['eval_noncompliance']}"] if not s["eval_compliant"] else []),
        *([f"  WARNING: eval ~{h100:.0f} s on 8 GPUs (projected), over the challenge's 600 s"] * (h100 > 600)),
        *[f"  WARNING: {w}" for w in s["warnings"]],
        f"score_val_bpb {s['score_val_bpb']:.4f} ({'sliding window' if sliding else 'round trip'}); run folder {out}",
        "=" * 60,
    ]
    for line in lines:
        log.log(line)
