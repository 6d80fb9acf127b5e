"""The plugin contract, importable by any plugin's tests (pytest or unittest): every built-in plugin
passes it in tests/plugins/test_contract.py, and a third-party plugin is checked exactly the same way.

    contract = PluginContract("my_gate")     # its tiny run as the plugin's `TINY` says
    contract.check_all(tmp_path)

Each check exists because its failure is silent in a real run:
- `check_config`: a setting that does not survive the TOML round trip is lost from the recipe a run
  saves; a misspelled key that is accepted runs the default without a word.
- `check_compiles`: a graph break makes `torch.compile(fullgraph=True)` fail on the GPU (and costs
  speed where it does not); the error says where in the plugin's module the break is.
- `check_no_recompile`: a switch (late QAT, depth recurrence) that changes a Python value read by
  `forward` recompiles inside the timed loop, costing seconds of the 600 s budget.
- `check_effect`: a plugin whose hooks never fire (wrong phase, a threshold never reached) trains
  and exports like the run without it.
Exact math, the fifth part of the contract, is the author's: compare the plugin's modules with
reference values made by the record's code, with `assert_matches_golden`.

This module imports no plugin and no pytest; its errors are `AssertionError`s naming the plugin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pgolf_core.types import Model, Tiny

# The tiny run of the contract: 4 layers (so per-layer plugins have layers to pick), 6 steps, one untimed
# warm-up step, a warmdown over the last 4 steps (so lr-scale thresholds are crossed), no periodic validation.
TINY = (
    "model.model_dim=32", "model.num_heads=4", "model.num_kv_heads=2", "model.num_layers=4",
    "train.train_seq_len=32", "train.train_batch_tokens=256", "train.iterations=6", "train.warmup_steps=1",
    "train.max_wallclock_seconds=0", "train.warmdown_iters=4", "train.val_loss_every=0",
    "train.train_log_every=1", "train.grad_accum_steps=1", "eval.max_tokens=1024", "eval.batch_tokens=512",
)  # fmt: skip
# "Has an effect" means more than rounding noise (~1e-7 in the tiny run's losses); measured for the built-ins
# in tests/plugins/test_contract.py, where the smallest loss effect is 1.3e-4 and the smallest bytes effect 2,380.
LOSS_EFFECT = 1e-5
BYTES_EFFECT = 300
LOSS_KEYS = ("val_loss", "roundtrip_val_loss", "sliding_val_loss")  # eval plugins act on the sliding eval only
_REFERENCE_RUNS: dict[tuple, dict] = {}  # runs without the plugin, shared by the contracts of one process


@dataclasses.dataclass
class PluginContract:
    """The contract of one plugin, as discovered under `name` (also in `plugin_dirs`, as `--plugins-dir`), on
    the tiny run (`TINY` above, then the plugin's own `Plugin.TINY`: its settings, chosen so that it acts within
    6 steps and 4 layers, the partners enabled in both runs, the overrides). `loss_effect`/`bytes_effect`: what
    "has an effect" must exceed.
    """

    name: str
    plugin_dirs: Sequence[str | Path] = ()
    loss_effect: float = LOSS_EFFECT
    bytes_effect: int = BYTES_EFFECT

    @functools.cached_property
    def tiny(self) -> Tiny:
        from pgolf_core.registry import discover, load_class

        return load_class(discover(self.plugin_dirs)[self.name]).TINY

    def recipe(self, tmp_path: Path, with_plugin: bool = True, extra: Sequence[str] = ()) -> Any:
        """The tiny recipe with the partners (and the plugin), its settings and the overrides."""
        from pgolf_core.registry import load_recipe
        from pgolf_core.types import dump_toml

        tiny = self.tiny
        names = [*tiny.partners, self.name] if with_plugin else list(tiny.partners)
        tables = {n: dict(tiny.settings) if n == self.name else {} for n in names}
        Path(tmp_path).mkdir(parents=True, exist_ok=True)
        path = Path(tmp_path) / f"{'-'.join(names) or 'none'}.toml"
        path.write_text(dump_toml({"plugins": tables}))
        overrides = [*TINY, *tiny.overrides, *(tiny.overrides_with if with_plugin else ()), *extra]
        return load_recipe(path, overrides, plugin_dirs=self.plugin_dirs)

    def check_config(self, tmp_path: Path) -> None:
        """The settings survive a TOML round trip of the whole recipe; an unknown key is refused
        (or, for a plugin without a `Config`, any key: "takes no settings")."""
        from pgolf_core.registry import load_recipe
        from pgolf_core.types import RecipeError

        tmp_path = Path(tmp_path)
        recipe = self.recipe(tmp_path)
        config = recipe.plugins[self.name].config
        again_path = tmp_path / "again.toml"
        again_path.write_text(recipe.to_toml())
        again = load_recipe(again_path, plugin_dirs=self.plugin_dirs).plugins[self.name].config
        assert again == config, f"{self.name}: config {config!r} reads back from TOML as {again!r}"  # (field by field)
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[plugins.{self.name}]\nno_such_key_xyz = 1\n")
        expected = "unknown key 'no_such_key_xyz'" if config is not None else "takes no settings"
        try:
            load_recipe(bad, plugin_dirs=self.plugin_dirs)
        except RecipeError as exc:
            assert expected in str(exc), f"{self.name}: an unknown key gives {exc!s}, expected {expected!r} in it"
        else:
            raise AssertionError(f"{self.name}: [plugins.{self.name}] no_such_key_xyz = 1 was accepted")

    def model(self, tmp_path: Path) -> Model:
        """The tiny model with the plugin (and partners), in training mode, uncompiled."""
        from pgolf_core.registry import create_manager
        from pgolf_core.run import build_model

        recipe = self.recipe(tmp_path)
        model = build_model(recipe, create_manager(recipe, tuple(self.plugin_dirs)))
        return model.train()

    def check_compiles(self, tmp_path: Path) -> None:
        """`torch._dynamo.explain` traces forward and loss as one graph with no break; a failure
        lists each break's reason and the plugin's source line it happened at."""
        model, recipe = self.model(tmp_path), self.recipe(tmp_path)
        size = (2, recipe.train.train_seq_len)
        x = torch.randint(0, recipe.model.vocab_size, size, generator=torch.Generator().manual_seed(0))
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(x, x)
        if explanation.graph_break_count == 0 and explanation.graph_count == 1:
            return
        breaks = "\n".join(f"  - {_where(r)}" for r in explanation.break_reasons) or "  (no break reasons recorded)"
        raise AssertionError(
            f"{self.name}: forward compiles to {explanation.graph_count} graphs with "
            f"{explanation.graph_break_count} graph breaks (expected 1 graph, 0 breaks); breaks:\n{breaks}\n"
            "Keep forward free of Python-side state, .item(), prints and data-dependent control flow; "
            "switch behaviour with tensor buffers updated from a train hook (docs/writing-plugins.md)."
        )

    def check_no_recompile(self, tmp_path: Path, steps: int | None = None) -> None:
        """Trains the tiny model compiled (`backend="aot_eager"`, `fullgraph=True`, as `pgolf run` but
        without inductor, so CPU suffices) through the untimed warm-up, then `steps` timed steps (the
        recipe's iterations by default) with the train hooks around each, as the training loop calls them.

        After the warm-up the stance is `torch.compiler.set_stance("fail_on_recompile")` (torch >= 2.6): any
        recompilation raises, with dynamo's reason (the guard that failed, e.g. a Python flag a train
        hook flipped). As a second check, dynamo's `torch._dynamo.utils.counters["stats"]["unique_graphs"]`
        must not grow after the warm-up."""
        from pgolf_core.optim import lr_scale, muon_momentum
        from pgolf_core.run import Run

        tmp_path = Path(tmp_path)
        recipe = self.recipe(tmp_path, extra=["run.compile=off"])
        run = Run(recipe, tmp_path / "recompile-run", False, tuple(self.plugin_dirs), False)
        torch._dynamo.reset()
        run.model = torch.compile(run.base, backend="aot_eager", fullgraph=True, dynamic=False)  # type: ignore[assignment]
        cfg, state, hook = recipe.train, run.state, run.plugins.pm.hook
        run.warm_up()
        graphs = _unique_graphs()
        loader, n = run.new_loader(), cfg.iterations if steps is None else steps
        with _fail_on_recompile():
            for step in range(n):
                state.step, state.elapsed_ms = step, float(step)
                state.lr_scale = lr_scale(step, state.elapsed_ms, cfg)
                hook.pgolf_step_start(state=state)
                run.optimizers.set_lr_scale(state.lr_scale)
                run.optimizers.set_muon_momentum(muon_momentum(step, cfg))
                try:
                    run.train_step(loader)
                except Exception as exc:  # dynamo's RecompileError (or any error of the compiled step)
                    raise AssertionError(
                        f"{self.name}: timed step {step} (lr_scale {state.lr_scale:.3f}) recompiled the model "
                        f"after warm-up: {type(exc).__name__}: {exc}"
                    ) from exc
                state.step = step + 1
                hook.pgolf_post_step(state=state)
        hook.pgolf_fit_end(state=state)
        assert _unique_graphs() == graphs, f"{self.name}: {_unique_graphs() - graphs} graphs compiled after warm-up"

    def check_effect(self, tmp_path: Path) -> tuple[dict, dict]:
        """Trains and exports the tiny run with and without the plugin; the plugin is in the summary,
        and a loss (`LOSS_KEYS`: final, round-trip, and sliding-window when both runs score one) or the
        artifact bytes move by more than noise.
        Returns the summaries `(with_plugin, without)` for further, plugin-specific checks."""
        from pgolf_core.run import train

        tmp_path = Path(tmp_path)
        key = (self.tiny.partners, self.tiny.overrides, tuple(map(str, self.plugin_dirs)))
        if key not in _REFERENCE_RUNS:
            ref = self.recipe(tmp_path / "without", with_plugin=False)
            _REFERENCE_RUNS[key] = train(ref, tmp_path / "without" / "run", interactive=False)
        without = _REFERENCE_RUNS[key]
        out = tmp_path / "with" / "run"
        recipe = self.recipe(tmp_path / "with")
        with_it = train(recipe, out, interactive=False, plugin_dirs=tuple(self.plugin_dirs))
        assert with_it["steps"] == recipe.train.iterations, f"{self.name}: trained {with_it['steps']} steps"
        assert (out / "summary.json").is_file() and "final_" in (out / "train.log").read_text()
        assert self.name in [p["name"] for p in with_it["plugins"]], f"{self.name}: not in the run's summary"
        keys = [k for k in LOSS_KEYS if with_it.get(k) is not None and without.get(k) is not None]
        loss = max(abs(with_it[k] - without[k]) for k in keys)
        size = abs(with_it["model_bytes"] - without["model_bytes"])
        print(f"{self.name}: loss effect {loss:.3e}, artifact effect {size} bytes")
        assert loss >= self.loss_effect or size >= self.bytes_effect, (
            f"{self.name}: no effect on the tiny run: loss moved {loss:.2e} (needs {self.loss_effect:.0e}), "
            f"artifact {size} bytes (needs {self.bytes_effect}); do its settings make it act within "
            f"{recipe.train.iterations} steps and {recipe.model.num_layers} layers?"
        )
        return with_it, without

    def check_all(self, tmp_path: Path) -> tuple[dict, dict]:
        """All four checks, each in its own subfolder; returns `check_effect`'s summaries."""
        tmp_path = Path(tmp_path)
        self.check_config(tmp_path / "config")
        self.check_compiles(tmp_path / "compiles")
        self.check_no_recompile(tmp_path / "no_recompile")
        return self.check_effect(tmp_path / "effect")


def assert_matches_golden(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0, what: str
) -> None:
    """`actual` (the plugin's output) equals `expected` (made by the record's own code, stored as a
    fixture) in shape, dtype and value within `atol + rtol * |expected|`; a failure names `what`, the
    largest difference and where it is. Pick `atol` from the measured difference, with a wide margin."""
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{what}: shape {tuple(actual.shape)}, golden {tuple(expected.shape)}"
    )
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, golden {expected.dtype}"
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    if bool(bad.any()) or not bool(torch.isfinite(a).all() == torch.isfinite(e).all()):
        i = int(diff.nan_to_num(float("inf")).argmax())
        index = tuple(int(k) for k in torch.unravel_index(torch.tensor(i), diff.shape)) if diff.dim() else ()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {diff.numel()} values differ by more than atol={atol:g} rtol={rtol:g}; "
            f"largest {float(diff.flatten()[i]):.3e} at {index}: {float(a.flatten()[i])!r} vs golden "
            f"{float(e.flatten()[i])!r}"
        )


def _fail_on_recompile() -> Any:
    """Recompiling raises (torch >= 2.6); on older torch only the graph count below checks."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("fail_on_recompile") if set_stance is not None else contextlib.nullcontext()


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _where(reason: Any) -> str:
    """A graph break's reason and the innermost frame of the user's code it happened in."""
    stack = list(getattr(reason, "user_stack", None) or [])
    frame = stack[-1] if stack else None
    at = f" at {frame.filename}:{frame.lineno} ({frame.name})" if frame is not None else ""
    return f"{str(getattr(reason, 'reason', reason)).strip()}{at}"
