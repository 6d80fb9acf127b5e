"""`pgolf ablate` argument parsing and the command (kept out of pgolf_core/cli.py)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from pgolf_core.ablate.plan import MIN_SMOKE_STEPS
from pgolf_core.types import PgolfError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="what each plugin is worth: variants × seeds, Welch statistics, resumable")
    p.add_argument("recipe", nargs="?", help="TOML recipe (not needed with --report)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--leave-one-out", action="store_true", help="full recipe + one variant per plugin off (default)")
    mode.add_argument("--add-one-in", action="store_true", help="from a base, add plugins cumulatively")
    mode.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="value sweep (repeatable)")
    p.add_argument("--base", metavar="RECIPE", help="--add-one-in base (default: the recipe with all plugins off)")
    p.add_argument("--order", metavar="A,B,C", help="--add-one-in order (default: the recipe's hook order)")
    p.add_argument("--only", metavar="NAME,...", help="toggle only these plugins")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--seeds", type=int, default=1, help="seeds 1337, 1338, ... (default 1)")
    p.add_argument("--seed-list", metavar="S1,S2,...")
    p.add_argument("--fixed-steps", type=int, metavar="N", help="equal steps: iterations=N, no wallclock cap")
    p.add_argument("--allow-few-steps", action="store_true", help=f"run --smoke < {MIN_SMOKE_STEPS} steps anyway")
    p.add_argument("--alpha", type=float, default=0.05, help="your significance level (default 0.05)")
    p.add_argument("--jobs", type=int, default=1, help="local parallel runs (one GPU each when there are enough)")
    p.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local")
    p.add_argument("--partition", help="slurm partition")
    p.add_argument("--time", type=float, default=60, help="slurm time limit per run, minutes")
    p.add_argument("--gpus-per-job", type=int, default=1)
    p.add_argument("--array-parallelism", type=int, default=64)
    p.add_argument("--png", action=argparse.BooleanOptionalAction, default=None, help="bar chart (needs matplotlib)")
    p.add_argument("--report", metavar="DIR", help="only re-render the report from DIR's finished runs")
    p.add_argument("--out", help="ablation directory (default runs/ablate-<recipe stem>)")
    p.add_argument("--plugins-dir", action="append", default=[], metavar="DIR")
    p.set_defaults(func=cmd_ablate)


def cmd_ablate(args: argparse.Namespace) -> int:
    from pgolf_core.ablate import execute, plan, report

    if not 0.0 < args.alpha < 1.0:
        raise PgolfError(f"--alpha {args.alpha}: expected a probability in (0, 1)")
    if args.png and importlib.util.find_spec("matplotlib") is None:
        raise PgolfError(report.NEEDS_MATPLOTLIB)
    if args.report:
        out = Path(args.report)
        if not (out / "plan.json").exists():
            raise PgolfError(f"--report {out}: no plan.json there (not an ablation directory)")
        the_plan = json.loads((out / "plan.json").read_text())
    else:
        if not args.recipe:
            raise PgolfError("pgolf ablate: give a RECIPE (or --report DIR)")
        if args.seeds < 1 or args.jobs < 1:
            raise PgolfError("--seeds and --jobs must be >= 1")
        args.out = args.out or f"runs/ablate-{Path(args.recipe).stem}"
        out = Path(args.out)
        the_plan = plan.make_plan(args)
        plan.write_or_check(the_plan, out)
        for name, why in the_plan["skipped"].items():
            print(f"ablate: skipped variant {name}: {why}", file=sys.stderr)
        print(
            f"ablate: {len(the_plan['runs'])} runs ({the_plan['compare']}), plan in {out / 'plan.json'}",
            file=sys.stderr,
        )
        failures = execute.execute(the_plan, args)
        for f in failures:
            print(f"ablate: failed {f}", file=sys.stderr)
    rep = report.build(the_plan, args.alpha)
    written = report.write(rep, out, args.png)
    sys.stdout.write(report.markdown(rep))
    print(f"ablate: wrote {', '.join(written)} in {out}", file=sys.stderr)
    return 1 if not args.report and failures else 0
