"""Shared fixtures. The embedded sample data is built once per test session into a temporary
cache (PGOLF_CACHE), never into the user's ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFICIAL_TOKENIZER = SHARED / "data" / "fineweb_1024_bpe.model"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every subprocess it starts) uses a session cache, never ~/.cache/pgolf."""
    cache = tmp_path_factory.getbasetemp() / "pgolf-cache"
    os.environ["PGOLF_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def sample_cache(isolated_cache: Path) -> Path:
    """Build the embedded sample data once per session in the isolated cache."""
    cache = isolated_cache
    from pgolf_core.data.sample import ensure_sample_data

    ensure_sample_data(log=lambda msg: None)
    return cache


@pytest.fixture
def official_tokenizer() -> Path:
    if not OFFICIAL_TOKENIZER.is_file():
        pytest.skip(f"official tokenizer not found at {OFFICIAL_TOKENIZER} (../shared is absent in a fresh clone)")
    return OFFICIAL_TOKENIZER
