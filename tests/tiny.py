"""The tiny run most tests train: a 2-layer, 32-wide model on the embedded sample data, a few steps,
no wallclock cap, no periodic validation. `tiny(**changes)` gives it as `--set` overrides, with
`changes` keyed `section__key` (e.g. `train__iterations=4`) replacing or adding settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgolf_core.model import GPT, ModelSpec

BASE: dict[str, Any] = {
    "model.model_dim": 32, "model.num_heads": 4, "model.num_kv_heads": 2, "model.num_layers": 2,
    "train.train_seq_len": 32, "train.train_batch_tokens": 512, "train.iterations": 6, "train.warmup_steps": 0,
    "train.max_wallclock_seconds": 0, "train.warmdown_iters": 3, "train.val_loss_every": 0,
    "train.train_log_every": 1, "eval.max_tokens": 2048, "eval.batch_tokens": 1024,
}  # fmt: skip


def tiny(**changes: Any) -> list[str]:
    settings = {**BASE, **{key.replace("__", "."): value for key, value in changes.items()}}
    return [f"{key}={value}" for key, value in settings.items()]


def baseline_gpt(spec: ModelSpec, seed: int = 0) -> GPT:
    """The naive baseline's model of `spec`, built as a run builds it (parts from the defaults plugin alone), after
    `torch.manual_seed(seed)`."""
    from pgolf_core.registry import create_manager
    from pgolf_core.run import build_model_with
    from pgolf_core.types import Recipe

    return build_model_with(spec, create_manager(Recipe()), seed)
