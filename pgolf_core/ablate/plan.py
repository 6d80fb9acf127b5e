"""Plan an ablation: variants (plugins toggled or values swept) × seeds, each with the exact
`pgolf run` arguments, written to DIR/plan.json before anything runs so a restart can be checked.

`requires` / `conflicts` (class attributes of plugins, tuples of plugin names) are read through the
registry; a variant that breaks them is skipped with its reason, never run half-configured.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgolf_core.types import PgolfError

SCHEMA = "pgolf.ablate.plan/2"  # /2: variants named no-X / with-X (never a leading `-`), steps in `compare`
# Below this many steps the smoke model's export rounds small matrices to all zeros: pr414 --smoke (seed 1337,
# fixed steps) exports 22 of its 70 int6 matrices as zeros at 20 steps (every attn.proj and mlp.proj: the
# record's scale floor), none at 50 or 100. The scored model then has no attention or MLP output, and no
# technique acting inside the blocks can show in an ablation.
MIN_SMOKE_STEPS = 50


@dataclass
class Variant:
    name: str
    recipe: str
    enable: list[str] = field(default_factory=list)
    disable: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    skipped: str | None = None


def check_constraints(enabled: list[str], source: str, plugin_dirs: tuple[str, ...] = ()) -> str | None:
    """Why the set of `enabled` plugins breaks a `requires` / `conflicts` declaration, or None."""
    from pgolf_core.registry import plugin_classes

    classes = plugin_classes(enabled, source, plugin_dirs)
    on = set(enabled)
    for name in sorted(on):
        for need in classes[name].requires:
            if need not in on:
                return f"{name} requires {need}, which is disabled"
        for other in classes[name].conflicts:
            if other in on:
                return f"{name} conflicts with {other} (both enabled)"
    return None


def build_variants(args: Any, recipe: Any) -> list[Variant]:
    """Variants from the mode options, named with `pgolf run`'s folder words (`no-xsa`, `with-swa`) so no
    folder or log starts with `-`; the reference variant is called `full`."""
    from pgolf_core.registry import plugin_classes

    dirs = tuple(args.plugins_dir)
    classes = plugin_classes(recipe.enabled_plugins, recipe.source, dirs)
    enabled = sorted(classes, key=lambda n: (int(getattr(classes[n], "order", 100)), n))  # hook order
    only = [s for s in (args.only or "").split(",") if s]
    for name in only:
        if name not in recipe.plugins:
            raise PgolfError(f"--only {name}: not a plugin of {recipe.source} (plugins: {', '.join(enabled)})")
    variants: list[Variant] = []
    if args.grid:
        keys = [g.split("=", 1) for g in args.grid]
        for g, kv in zip(args.grid, keys, strict=True):
            if len(kv) != 2 or not kv[1] or kv[0].startswith("-"):
                raise PgolfError(f"--grid {g}: expected KEY=V1,V2,...")
        values = [kv[1].split(",") for kv in keys]
        for combo in itertools.product(*values):
            sets = [f"{k}={v}" for (k, _), v in zip(keys, combo, strict=True)]
            variants.append(Variant(",".join(sets), args.recipe, sets=sets))
    elif args.add_one_in:
        order = [s for s in (args.order or "").split(",") if s] or (only or enabled)
        base_recipe = args.base or args.recipe
        off = [] if args.base else [p for p in recipe.plugins if recipe.plugins[p].enabled]
        variants.append(Variant("base", base_recipe, disable=list(off)))
        added: list[str] = []
        for name in order:
            added.append(name)
            rest = [p for p in off if p not in added]
            label = "full" if name == order[-1] else "with-" + "-with-".join(added)
            variants.append(Variant(label, base_recipe, enable=[p for p in added if p not in off], disable=rest))
    else:
        variants.append(Variant("full", args.recipe))
        for name in only or enabled:
            variants.append(Variant(f"no-{name}", args.recipe, disable=[name]))
    for v in variants:
        on = [p for p in enabled if p not in v.disable] + [p for p in v.enable if p not in enabled]
        v.skipped = check_constraints(on, recipe.source, dirs)
    return variants


def seeds_of(args: Any) -> list[int]:
    """Sorted and unique: a seed listed twice would run twice into one folder, and a superset of the stored
    seeds keeps the stored runs' order (see `write_or_check`)."""
    if args.seed_list:
        try:
            return sorted({int(s) for s in args.seed_list.split(",")})
        except ValueError:
            raise PgolfError(f"--seed-list {args.seed_list}: expected integers like 1337,42,2024") from None
    return [1337 + i for i in range(args.seeds)]


def run_args(v: Variant, seed: int, args: Any, out: Path) -> list[str]:
    """The exact `pgolf run` arguments of one (variant, seed)."""
    sets = list(args.overrides) + v.sets
    if args.fixed_steps:
        sets += [f"train.iterations={args.fixed_steps}", "train.max_wallclock_seconds=0"]
    argv = ["run", v.recipe, *(["--smoke"] if args.smoke else []), *_each("--set", [*sets, f"run.seed={seed}"])]
    argv += _each("--enable", v.enable) + _each("--disable", v.disable) + _each("--plugins-dir", args.plugins_dir)
    return argv + ["--out", str(out / v.name / f"seed{seed}")]


def _each(flag: str, values: list[str]) -> list[str]:
    """`flag` before every value: ["--set", "a=1", "--set", "b=2"]."""
    return [arg for value in values for arg in (flag, value)]


def check_smoke_steps(args: Any, steps: int | None) -> None:
    """Refuse a smoke ablation too short to see anything inside the blocks (MIN_SMOKE_STEPS says why)."""
    if args.smoke and steps is not None and steps < MIN_SMOKE_STEPS and not args.allow_few_steps:
        flag = f"--fixed-steps {steps}" if args.fixed_steps else f"--smoke with train.iterations={steps}"
        raise PgolfError(
            f"{flag}: below {MIN_SMOKE_STEPS} steps the smoke model's export rounds small matrices to all zeros "
            f"(pr414: every attn.proj and mlp.proj), so no technique inside the blocks can show; "
            f"use --fixed-steps {MIN_SMOKE_STEPS} or more (--allow-few-steps runs it anyway)"
        )


def make_plan(args: Any) -> dict[str, Any]:
    from pgolf_core.registry import load_recipe

    out = Path(args.out)
    recipe = load_recipe(args.recipe, list(args.overrides), smoke=args.smoke)
    cap = recipe.train.max_wallclock_seconds
    steps = args.fixed_steps or (recipe.train.iterations if cap <= 0 else None)
    check_smoke_steps(args, steps)
    variants = build_variants(args, recipe)
    seeds = seeds_of(args)
    runs = [
        {"variant": v.name, "seed": s, "args": run_args(v, s, args, out)}
        for v in variants
        if v.skipped is None
        for s in seeds
    ]
    return {
        "schema": SCHEMA,
        "recipe": args.recipe,
        "compare": f"equal steps ({steps})" if steps else f"equal wall time ({cap:g} s)",
        "reference": "full" if any(v.name == "full" for v in variants) else variants[0].name,
        "variants": [v.name for v in variants if v.skipped is None],
        "skipped": {v.name: v.skipped for v in variants if v.skipped},
        "seeds": seeds,
        "runs": runs,
    }


def write_or_check(plan: dict[str, Any], out: Path) -> None:
    """Write DIR/plan.json, or refuse a restart whose plan differs from the stored one. More seeds are no
    difference: the plan grows by the new seeds' runs, and the finished ones are skipped as on any restart."""
    path = out / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old == plan:
            return
        seeds = old.get("seeds", [])
        if {**plan, "seeds": seeds, "runs": [r for r in plan["runs"] if r["seed"] in seeds]} != old:
            raise PgolfError(
                f"{path}: this directory holds another ablation; {_difference(old, plan)} (use another --out)"
            )
        print(f"ablate: adding seeds {sorted(set(plan['seeds']) - set(seeds))} to {path}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan, indent=2))
    tmp.replace(path)


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key in ("schema", "recipe", "compare", "variants", "seeds", "skipped"):
        if old.get(key) != new.get(key):
            return f"{key}: stored {old.get(key)!r}, now {new.get(key)!r}"
    for a, b in zip(old.get("runs", []), new.get("runs", []), strict=False):
        if a != b:
            return (
                f"run {a['variant']}/seed{a['seed']}: stored args {' '.join(a['args'])!r}, now {' '.join(b['args'])!r}"
            )
    return "the run lists differ"
