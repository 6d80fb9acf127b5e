"""Attention backend selection. `auto` = flash attention on CUDA when installed (and says so),
PyTorch SDPA otherwise; an explicit `flash` without the package is an error, never a fallback."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

from pgolf_core.types import PgolfError

# FlashAttention-3 (Hopper, used by the #374/#414 records) first, then FlashAttention-2.
_FLASH_MODULES = ("flash_attn_interface", "flash_attn")


def _find_flash() -> Any | None:
    for name in _FLASH_MODULES:
        with contextlib.suppress(ImportError):  # not installed (or not importable): try the next one
            return importlib.import_module(name)
    return None


def flash_kernel() -> Callable[..., Any]:
    """The installed `flash_attn_func` (layout [B, T, H, D], GQA native), found once when the model
    is built: an import inside `forward` would break the compiled graph."""
    module = _find_flash()
    if module is None:
        raise PgolfError("flash attention was requested but neither flash_attn_interface nor flash_attn is installed")
    return module.flash_attn_func


def resolve_backend(requested: str, device_type: str) -> tuple[str, str]:
    """Return (backend, reason) for the recipe's `model.attention` on this device."""
    flash = _find_flash() if device_type == "cuda" else None
    if requested == "flash":
        if device_type != "cuda":
            raise PgolfError('[model] attention = "flash" needs a CUDA device; use "auto" or "sdpa"')
        if flash is None:
            raise PgolfError(
                '[model] attention = "flash" but flash attention is not installed '
                '(pip install \'pgolf[gpu]\'); use "auto" or "sdpa" to run with PyTorch SDPA'
            )
        return "flash", f"flash ({flash.__name__}) as requested"
    if requested == "sdpa":
        return "sdpa", "PyTorch SDPA as requested"
    if flash is not None:
        return "flash", f"auto: CUDA and {flash.__name__} installed -> flash attention"
    why = "no CUDA device" if device_type != "cuda" else "flash attention not installed"
    return "sdpa", f"auto: {why} -> PyTorch SDPA"
