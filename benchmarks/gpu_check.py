"""One command for whoever has a CUDA GPU at hand: every shipped recipe for a few compiled bf16 steps, with
its evals and export, checked for graph breaks and for recompilation after the warm-up; the #414 step ratio.

    python benchmarks/gpu_check.py [--record-script PATH/TO/PR414/train_gpt.py] [--out DIR] [--steps N]

What it does, on one GPU, within `--budget` seconds (default 450: under 8 minutes on an H100, not yet measured):
1. The #414 step ratio, first and alone on the GPU: `benchmarks/bench_pr414_gpu.py`'s `main` (imported, with its
   defaults), when `--record-script` is given; else "skipped (no record script)".
2. Each recipe in `recipes/` (and pr414 with `--enable depth_recurrence`, since no shipped recipe loops layers) as
   a real run of `pgolf_core.run.Run` (setup, fit, finish: what `pgolf_core.train` runs, with an observer
   registered on the run's plugin manager) on CUDA with `run.compile=on`: the full-size model, `--steps`
   timed steps after `--warmup` untimed steps per layer phase, one micro-batch of `--batch-seqs` sequences
   per step, evals on `--eval-tokens` validation tokens of the embedded sample data, then export, read back,
   round-trip (and sliding-window, test-time-training) evals. Settings that make the recipe's transitions
   happen within the few steps are added and listed in the JSON (warmdown over all steps; late QAT at LR
   scale < 0.5; SWA every step below LR scale 0.5; test-time training one epoch per phase on `--batch-seqs`
   rows); zstd recipes export at level 3 unless `--full-export` (the bytes are then the check's, not the
   recipe's). Each recipe runs in its own process, time-boxed, `--jobs` at a time (default: all at once,
   sharing the CPU cores for compilation; their step times are then indicative only, `--jobs 1` for clean
   ones). A recipe is not started with under a minute of the budget left ("skipped (budget)"; rerun it
   with `--only NAME`).
3. Graph breaks: `torch._dynamo.explain` of the run's own model on CUDA (its attention backend: FlashAttention
   where installed and the recipe says `auto`), under bf16 autocast, once per layer phase, as
   `pgolf_core.testing.PluginContract.check_compiles` does on a plugin's tiny CPU model (which is why it is
   not called here: it builds one plugin's tiny recipe, not a full recipe on the GPU).
4. Recompiles after the warm-up: dynamo's graph count (`pgolf_core.testing`'s counter) when the first timed
   step starts and after the last one, with dynamo's reason for each recompile in between. It counts rather
   than setting `fail_on_recompile` (as `check_no_recompile` does) so that a recompiling recipe still reports
   its evals and export.

Writes `gpu_check.json` and `gpu_check.md` (a table, also printed) into `--out`; each run's folder holds its
log. Exit 0 when every check passed, 1 when one failed, 2 without a CUDA device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RATIO_TARGET = 1.02
MIN_START_S = 60  # a recipe is not started with less of the budget left


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    recipe: Path
    enable: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return self.name.replace("+", "-")


def cases() -> list[Case]:
    """The shipped recipes and the depth-recurrence case, those whose warm-up compiles most first."""
    found = [Case(p.stem, p) for p in sorted((ROOT / "recipes").glob("*.toml"))]
    found.append(Case("pr414+depth_recurrence", ROOT / "recipes" / "pr414.toml", ("depth_recurrence",)))
    first = ["pr415", "pr414+depth_recurrence", "pr414", "pr297", "pr194"]
    return sorted(found, key=lambda c: (first.index(c.name) if c.name in first else len(first), c.name))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See docs/benchmarks.md.")
    ap.add_argument("--record-script", type=Path, help="a PR #414 train_gpt.py, for the step ratio")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="output folder (default runs/gpu_check)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per recipe (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per layer phase (default 2)")
    ap.add_argument("--batch-seqs", type=int, default=8, help="sequences per step and TTT batch (default 8)")
    ap.add_argument("--eval-tokens", type=int, default=32768, help="validation tokens scored (default 32768)")
    ap.add_argument("--jobs", type=int, default=7, help="recipes run at a time (default 7: all)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for everything (default 450)")
    ap.add_argument("--case-timeout", type=float, default=300.0, help="seconds per recipe at most (default 300)")
    ap.add_argument("--ratio-timeout", type=float, default=210.0, help="seconds for the #414 ratio (default 210)")
    ap.add_argument("--only", action="append", default=[], metavar="CASE", help="run only this case (repeatable)")
    ap.add_argument("--full-export", action="store_true", help="export at the recipes' own compression levels")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    ap.add_argument("--ratio", action="store_true", help=argparse.SUPPRESS)  # internal: the #414 ratio here
    return ap.parse_args(argv)


# ---------------------------------------------------------------- one case, in its own process


def overrides_for(recipe: Any, args: argparse.Namespace) -> list[str]:
    """`--set`-style overrides: the short compiled CUDA run, then the settings that make the recipe's
    transitions happen within `args.steps` steps."""
    n, seq, seqs = args.steps, recipe.train.train_seq_len, args.batch_seqs
    out = [
        "run.device=cuda", "run.compile=on", f"train.iterations={n}", f"train.warmup_steps={args.warmup}",
        "train.max_wallclock_seconds=0", f"train.warmdown_iters={n}", "train.val_loss_every=0",
        "train.grad_accum_steps=1", f"train.train_batch_tokens={seqs * seq}",
        f"eval.max_tokens={args.eval_tokens}", f"eval.batch_tokens={args.eval_tokens}",
    ]  # fmt: skip
    on = set(recipe.enabled_plugins)
    if "late_qat" in on:
        out += ["plugins.late_qat.threshold=0.5", "plugins.late_qat.start_frac=0.0"]
    if "swa" in on:
        out += ["plugins.swa.every=1", "plugins.swa.threshold=0.5"]
    if "ttt_two_phase" in on:
        out += ["plugins.ttt_two_phase.phase1_epochs=1", "plugins.ttt_two_phase.phase2_epochs=1"]
        out += [f"plugins.ttt_two_phase.batch_rows={seqs}"]
    if "ttt_sgd" in on:
        out += ["plugins.ttt_sgd.epochs=1", f"plugins.ttt_sgd.batch_rows={seqs}"]
    if recipe.export.compressor == "zstd" and not args.full_export:
        out.append("export.level=3")
    return out


class RecompileLog:
    """Dynamo's "Recompiling function ..." messages while armed (its `recompiles` log, switched on here)."""

    def __init__(self) -> None:
        import logging

        import torch

        self.armed, self.messages = False, []
        torch._logging.set_logs(recompiles=True)
        handler = logging.Handler(logging.DEBUG)
        handler.emit = self.emit  # type: ignore[method-assign]
        try:
            from torch._dynamo.guards import recompiles_log
        except ImportError:  # another torch: the graph count still checks
            return
        recompiles_log.addHandler(handler)

    def emit(self, record: Any) -> None:
        if self.armed:
            self.messages.append(" ".join(record.getMessage().split())[:400])


class Observer:
    """Registered with the run's plugin manager: dynamo's graph count when the first timed step starts and
    after the last one (the final validation, which compiles the eval graph, comes later)."""

    def __init__(self, steps: int, recompiles: RecompileLog) -> None:
        from pgolf_core import hookimpl
        from pgolf_core.testing import _unique_graphs

        self.steps, self.recompiles, self.count = steps, recompiles, _unique_graphs
        self.start: int | None = None
        self.end: int | None = None

        @hookimpl
        def pgolf_step_start(state: Any) -> None:
            if state.step == 0:
                self.start, self.recompiles.armed = self.count(), True

        @hookimpl
        def pgolf_post_step(state: Any) -> None:
            self.end = self.count()
            if state.step >= self.steps:
                self.recompiles.armed = False

        self.pgolf_step_start, self.pgolf_post_step = pgolf_step_start, pgolf_post_step


def graph_breaks(run: Any) -> list[dict[str, Any]]:
    """`torch._dynamo.explain` of the run's model (forward and loss, train mode, bf16 autocast) per layer phase."""
    import torch

    from pgolf_core.testing import _where

    model, phases, recipe = run.base, [], run.recipe
    saved = model.layer_phase
    x = torch.randint(0, recipe.model.vocab_size, (2, recipe.train.train_seq_len), device=run.env.device)
    model.train()
    for phase in range(len(model.layer_orders)):
        model.layer_phase = phase
        torch._dynamo.reset()
        with run.env.autocast():
            e = torch._dynamo.explain(model)(x, x)
        reasons = [_where(r) for r in e.break_reasons]
        phases.append({"phase": phase, "graphs": e.graph_count, "breaks": e.graph_break_count, "reasons": reasons})
    model.layer_phase = saved
    torch._dynamo.reset()
    return phases


def check_case(case: Case, args: argparse.Namespace) -> int:
    """Run one case here and write its row to `<out>/<case>/result.json` after every phase."""
    import torch

    from pgolf_core import load_recipe, records
    from pgolf_core.model import resolve_backend
    from pgolf_core.run import Run

    folder = args.out / case.slug
    folder.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"case": case.name, "recipe": str(case.recipe.relative_to(ROOT)), "enable": case.enable}
    t0 = time.perf_counter()

    def phase(name: str) -> None:
        row["phase"], row["wall_s"] = name, round(time.perf_counter() - t0, 1)
        print(f"gpu_check: {case.name}: {name} ({row['wall_s']} s)", flush=True)
        records.write_json_atomic(folder / "result.json", row)

    claim, run, problems = records.Claim(), None, []
    try:
        phase("load")
        plain = load_recipe(case.recipe, enable=case.enable)
        row["overrides"] = overrides_for(plain, args)
        recipe = load_recipe(case.recipe, row["overrides"], enable=case.enable)
        backend, why = resolve_backend(recipe.model.attention, "cuda")
        row["attention"] = f"{backend} ({why})"
        recompiles = RecompileLog()
        phase("setup")
        run = Run(recipe, folder / "run", True, (), False)
        phase("graph breaks")
        row["explain"] = graph_breaks(run)
        if any(p["graphs"] != 1 or p["breaks"] for p in row["explain"]):
            reasons = "; ".join(r for p in row["explain"] for r in p["reasons"]) or "no reasons recorded"
            problems.append(f"explain found {breaks(row)} (graphs g, breaks b per layer phase): {reasons}")
        observer = Observer(recipe.train.iterations, recompiles)
        run.plugins.pm.register(observer, name="gpu_check_observer")
        claim.take(run.out, True, run.log.log)  # as `pgolf_core.run.train`: every check passed, the folder is ours
        run.log.attach(run.out)
        phase("fit (warm-up compiles)")
        run.fit(time.perf_counter)
        timed = run.step_times
        row.update(steps=run.state.step, first_step_ms=timed[0] if timed else None)
        row["step_ms_median"] = statistics.median(timed[1:]) if len(timed) > 1 else None
        row["graphs_after_warmup"] = observer.start
        row["recompiles_after_warmup"] = (
            None if observer.start is None or observer.end is None else observer.end - observer.start
        )
        row["recompile_reasons"] = recompiles.messages
        if run.state.step != recipe.train.iterations:
            problems.append(f"trained {run.state.step} of {recipe.train.iterations} steps")
        if row["recompiles_after_warmup"] or recompiles.messages:
            problems.append(f"recompiled after warm-up: {'; '.join(recompiles.messages) or 'see the log'}")
        if run.env.is_cuda:
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        phase("finish (export, evals)")
        summary = run.finish()
        keys = ("val_bpb", "roundtrip_val_bpb", "sliding_val_bpb", "artifact_bytes", "model_bytes", "artifact_format",
                "model_params", "export_seconds", "eval_seconds", "warnings", "plugin_reports")  # fmt: skip
        row.update({k: summary.get(k) for k in keys})
    except BaseException as exc:  # noqa: BLE001 - any failure is this case's result
        traceback.print_exc()
        problems.append(f"error in {row.get('phase')}: {type(exc).__name__}: {' '.join(str(exc).split())[:600]}")
    finally:
        if run is not None:
            run.log.stop_progress()
        claim.release()
    row["problems"], row["status"] = problems, "FAIL" if problems else "ok"
    phase("done")
    return 1 if problems else 0


def check_ratio(args: argparse.Namespace) -> int:
    """The #414 step ratio by `benchmarks/bench_pr414_gpu.py` (its defaults), here."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import bench_pr414_gpu

    bench_pr414_gpu.main(["--record-script", str(args.record_script), "--json", str(args.out / "pr414_ratio.json")])
    return 0


# ---------------------------------------------------------------- the command: children, time boxes, the report


@dataclasses.dataclass
class Job:
    name: str
    proc: subprocess.Popen
    started: float
    box: float
    log: Path


def start(name: str, extra: list[str], args: argparse.Namespace, folder: Path, box: float, jobs: int) -> Job:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").unlink(missing_ok=True)  # a row from an earlier check is not this one's
    log = folder / "gpu_check.log"
    argv = [sys.executable, str(Path(__file__).resolve()), *extra, "--out", str(args.out)]
    argv += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-seqs", str(args.batch_seqs)]
    argv += ["--eval-tokens", str(args.eval_tokens)] + ["--full-export"] * args.full_export
    # Processes running at once share the CPU cores for their Triton compiles (unless the caller set this).
    env = {"TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 1) // jobs)), **os.environ}
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"[gpu_check] {name}: started (time box {box:.0f} s, log {log})", flush=True)
    return Job(name, proc, time.monotonic(), box, log)


def stop(job: Job) -> None:
    """The job's process group (its compile workers too), which this command started."""
    if job.proc.poll() is None:
        os.killpg(job.proc.pid, signal.SIGKILL)
        job.proc.wait()


def tail(log: Path, lines: int = 3) -> str:
    text = [s for s in log.read_text(errors="replace").splitlines() if s.strip()] if log.is_file() else []
    return " | ".join(s.strip()[:300] for s in text[-lines:])


def ended(job: Job, result: Path, timed_out: bool) -> dict[str, Any]:
    row = json.loads(result.read_text()) if result.is_file() else {"case": job.name}
    row["wall_s"] = round(time.monotonic() - job.started, 1)
    if timed_out and "status" not in row:  # (a row with a status was finished, its process still exiting)
        row["status"] = "timeout"
        row.setdefault("problems", []).append(f"time box of {job.box:.0f} s reached in {row.get('phase', 'start')}")
    elif "status" not in row:
        row.update(status="FAIL", problems=[f"exited with {job.proc.returncode}: {tail(job.log)}"])
    return row


def run_ratio(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    if args.record_script is None:
        return {"status": "skipped (no record script)"}
    (args.out / "pr414_ratio.json").unlink(missing_ok=True)
    job = start("#414 ratio", ["--ratio", "--record-script", str(args.record_script)], args, args.out / "ratio",
                min(args.ratio_timeout, deadline - time.monotonic()), 1)  # fmt: skip
    try:
        job.proc.wait(timeout=job.box)
    except subprocess.TimeoutExpired:
        stop(job)
        return {"status": "timeout", "problems": [f"time box of {job.box:.0f} s reached: {tail(job.log)}"]}
    result = args.out / "pr414_ratio.json"
    if job.proc.returncode or not result.is_file():
        return {"status": "FAIL", "problems": [f"exited with {job.proc.returncode}: {tail(job.log)}"]}
    row = json.loads(result.read_text())
    row["status"] = "ok" if row["ratio"] <= RATIO_TARGET else f"above target {RATIO_TARGET}"
    print(f"[gpu_check] #414 ratio: pgolf {row['pgolf_ms']:.2f} ms, record {row['record_ms']:.2f} ms, "
          f"ratio {row['ratio']:.3f} ({time.monotonic() - job.started:.0f} s)", flush=True)  # fmt: skip
    return row


def run_cases(todo: list[Case], args: argparse.Namespace, deadline: float) -> list[dict[str, Any]]:
    pending, running, rows, beat = list(todo), {}, {}, time.monotonic()
    try:
        while pending or running:
            if time.monotonic() - beat >= 30:  # where each running recipe is, every 30 s
                beat = time.monotonic()
                print("[gpu_check] running: " + ", ".join(f"{n} {phase_of(args.out / c.slug)}"
                                                         for n, (c, _) in running.items()), flush=True)  # fmt: skip
            while pending and len(running) < args.jobs:
                left = deadline - time.monotonic()
                if left < MIN_START_S:
                    for case in pending:
                        rows[case.name] = {"case": case.name, "status": "skipped (budget)", "problems": []}
                    pending.clear()
                    break
                case = pending.pop(0)
                box = min(args.case_timeout, left)
                job = start(
                    case.name, ["--case", case.name], args, args.out / case.slug, box, min(args.jobs, len(todo))
                )
                running[case.name] = (case, job)
            time.sleep(1.0)
            for name, (case, job) in list(running.items()):
                late = job.proc.poll() is None and time.monotonic() - job.started > job.box
                if job.proc.poll() is None and not late:
                    continue
                stop(job)
                rows[name] = row = ended(job, args.out / case.slug / "result.json", late)
                del running[name]
                print(f"[gpu_check] {name}: {row['status']} in {row['wall_s']:.0f} s; {line(row)}", flush=True)
    finally:
        for _, job in running.values():
            stop(job)
    return [rows[c.name] for c in todo if c.name in rows]


def phase_of(folder: Path) -> str:
    try:
        row = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return "(starting)"
    return f"({row.get('phase')} since {row.get('wall_s')} s)"


def line(row: dict[str, Any]) -> str:
    parts = [f"{row.get('steps', '-')} steps", f"{fmt(row.get('step_ms_median'), '.1f')} ms/step",
             f"breaks {breaks(row)}", f"recompiles {fmt(row.get('recompiles_after_warmup'))}",
             f"round-trip bpb {fmt(row.get('roundtrip_val_bpb'), '.4f')}"]  # fmt: skip
    return ", ".join(parts) + "".join(f"; {p}" for p in row.get("problems", []))


def fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def breaks(row: dict[str, Any]) -> str:
    phases = row.get("explain")
    return "-" if not phases else "/".join(f"{p['graphs']}g {p['breaks']}b" for p in phases)


def markdown(report: dict[str, Any]) -> str:
    a, r = report["settings"], report["pr414_ratio"]
    lines = [
        f"`benchmarks/gpu_check.py`, {report['date']}: {report['device']}, torch {report['torch']}, "
        f"CUDA {report['cuda']}, attention {report['attention_auto']}",
        "",
        f"{a['steps']} timed steps after {a['warmup']} warm-up steps per layer phase; {a['batch_seqs']} sequences "
        f"per step; evals on {a['eval_tokens']:,} sample validation tokens; {a['jobs']} recipes at a time "
        f"(step times of concurrent runs are indicative only); {report['elapsed_s']:.0f} s in all.",
        "*graphs/breaks*: `torch._dynamo.explain` per layer phase (1 graph, 0 breaks expected); *recompiles*: "
        "graphs compiled between the first timed step and the last (0 expected).",
        "",
        "| case | status | attention | steps | ms/step (median) | 1st step ms | graphs/breaks | recompiles "
        "| val_bpb | round-trip bpb | sliding bpb | artifact bytes | format | wall s |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in report["cases"]:
        cells = [row["case"], row["status"], str(row.get("attention", "-")).split(" ")[0], fmt(row.get("steps")),
                 fmt(row.get("step_ms_median"), ".1f"), fmt(row.get("first_step_ms"), ".0f"), breaks(row),
                 fmt(row.get("recompiles_after_warmup")), fmt(row.get("val_bpb"), ".4f"),
                 fmt(row.get("roundtrip_val_bpb"), ".4f"), fmt(row.get("sliding_val_bpb"), ".4f"),
                 fmt(row.get("artifact_bytes"), ","), fmt(row.get("artifact_format")),
                 fmt(row.get("wall_s"), ".0f")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if "ratio" in r:
        lines.append(
            f"#414 step ratio (benchmarks/bench_pr414_gpu.py, batch {r['batch']}, {r['runs']} steps x repeats): "
            f"pgolf {r['pgolf_ms']:.2f} ms, record {r['record_ms']:.2f} ms, ratio **{r['ratio']:.3f}** "
            f"(target <= {RATIO_TARGET}; {r['status']}), peak {r['peak_mem_gib']:.1f} GiB."
        )
    else:
        lines.append(f"#414 step ratio: {r['status']}" + "".join(f"; {p}" for p in r.get("problems", [])))
    failed = [(row["case"], p) for row in report["cases"] for p in row.get("problems", [])]
    if failed:
        lines += ["", "Problems:", *(f"- {case}: {p}" for case, p in failed)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    by_name = {c.name: c for c in cases()}
    if args.case:
        return check_case(by_name[args.case], args)
    if args.ratio:
        return check_ratio(args)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__} sees none); this check needs one NVIDIA GPU, "
              "run it on a machine that has one", file=sys.stderr)  # fmt: skip
        return 2
    if unknown := [n for n in args.only if n not in by_name]:
        print(f"gpu_check: unknown case {unknown[0]!r}; cases: {', '.join(by_name)}", file=sys.stderr)
        return 2
    if args.record_script is not None and not args.record_script.is_file():
        print(f"gpu_check: {args.record_script}: no such file (a PR #414 train_gpt.py)", file=sys.stderr)
        return 2
    if args.record_script is not None:
        args.record_script = args.record_script.resolve()  # the children run in the repository root
    t0 = time.monotonic()
    deadline = t0 + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    from pgolf_core import records
    from pgolf_core.data.build import ensure_sample_data
    from pgolf_core.model import resolve_backend

    ensure_sample_data(log=print)  # once, before the recipes' processes read it
    todo = [c for c in by_name.values() if not args.only or c.name in args.only]
    print(f"[gpu_check] {torch.cuda.get_device_name()}: {len(todo)} cases, budget {args.budget:.0f} s", flush=True)
    ratio = run_ratio(args, deadline)
    rows = run_cases(todo, args, deadline)
    _, why = resolve_backend("auto", "cuda")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "attention_auto": why,
        "settings": {k: getattr(args, k) for k in ("steps", "warmup", "batch_seqs", "eval_tokens", "jobs", "budget")},
        "record_script": str(args.record_script) if args.record_script else None,
        "elapsed_s": time.monotonic() - t0,
        "pr414_ratio": ratio,
        "cases": rows,
    }
    report["ok"] = all(r["status"] == "ok" for r in rows) and ratio["status"] not in ("FAIL", "timeout")
    records.write_json_atomic(args.out / "gpu_check.json", report)  # strict JSON: a NaN loss becomes null
    table = markdown(report)
    (args.out / "gpu_check.md").write_text(table)
    print("\n" + table)
    print(f"[gpu_check] wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
