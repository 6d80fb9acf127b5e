"""Print the observed error behind each tolerance of the exact-value tests, and the margin.

Run it under each CPU dispatch the suite must pass on (CONTRIBUTING.md, "Exact values"):

    python tools/tolerance_margins.py                      # native (e.g. AVX512)
    ATEN_CPU_CAPABILITY=avx2 python tools/tolerance_margins.py
    ATEN_CPU_CAPABILITY=default python tools/tolerance_margins.py

Every margin (tolerance / observed) must be >= 10. The DDP test's numbers come from running it
(its comment states them); this script measures the in-process comparisons.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import reference_baseline as ref  # noqa: E402
from pgolf_core import build_model, load_recipe  # noqa: E402
from tests import test_model as tm  # noqa: E402
from tests.plugins import golden as gh  # noqa: E402
from tests.plugins import test_record_models as trm  # noqa: E402
from tests.plugins import test_training_plugins as ttp  # noqa: E402


def record_errors(text: str, fixture: str, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.toml"
        path.write_text(text)
        model = build_model(load_recipe(path))
    golden = torch.load(gh.FIXTURES / fixture)
    model.load_state_dict(gh.randomize(model.state_dict(), seed), strict=True)
    return gh.golden_errors(model, golden)


def model_reference_errors() -> dict[str, float]:
    worst: dict[str, float] = {}
    for case in tm.CASES.values():
        for fused in (False, True):
            model = tm.random_model(**case)
            x, y = tm.tokens(model.spec.vocab_size)
            params = tm.leaf_params(model)
            with torch.no_grad():
                got, want = model.forward_logits(x), ref.logits(params, x, fused=fused)
            loss, want_loss = model(x, y), ref.loss(params, x, y, fused=fused)
            loss.backward()
            want_loss.backward()
            grad = max((p.grad - params[n].grad).abs().max().item() for n, p in model.named_parameters())
            for key, value in (
                ("model.logits", (got - want).abs().max().item()),
                ("model.loss", abs(loss.item() - want_loss.item())),
                ("model.grads", grad),
            ):
                worst[key] = max(worst.get(key, 0.0), value)
    return worst


def qat_errors() -> dict[str, float]:
    """tests/plugins/test_training_plugins.py: QAT on, the record's training loss (tolerance 1e-5 there)."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for rule in sorted(ttp.RECORDS):
            model, pm, golden = ttp.record_model(Path(d), rule)
            pm.hook.pgolf_step_start(state=ttp.fake_state(model))
            out[f"{rule}.qat_train_loss128"] = abs(
                ttp.loss_of(model, golden, True) - golden["qat_train_loss128"].item()
            )
    return out


def main() -> None:
    rows: list[tuple[str, float, float]] = []
    for name, (text, fixture, seed) in {
        "pr414": (trm.PR414_SMALL, "pr414_golden.pt", 414),
        "pr194": (trm.PR194_SMALL, "pr194_golden.pt", 194),
        "pr63": (trm.PR63_SMALL, "pr63_golden.pt", 63),
    }.items():
        for key, err in record_errors(text, fixture, seed).items():
            rows.append((f"{name}.{key}", err, gh.TOLERANCE[key.rstrip("0123456789")]))
    for key, err in qat_errors().items():
        rows.append((key, err, 1e-5))
    for key, err in model_reference_errors().items():
        rows.append((key, err, tm.TOLERANCE[key.split(".")[1]]))
    print(f"cpu_capability={torch.backends.cpu.get_cpu_capability()} torch={torch.__version__}")
    print(f"{'comparison':28} {'observed':>10} {'tolerance':>10} {'margin':>8}")
    for key, err, tol in rows:
        margin = tol / err if err else float("inf")
        print(f"{key:28} {err:10.2e} {tol:10.2e} {margin:8.0f}{'' if margin >= 10 else '  < 10x'}")


if __name__ == "__main__":
    main()
