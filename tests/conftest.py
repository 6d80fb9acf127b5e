"""Shared fixtures. The embedded sample data is built once per test session into a temporary
cache (PGOLF_CACHE), never into the user's ~/.cache."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from types import FrameType

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
    from pgolf_core.data.build import ensure_sample_data

    ensure_sample_data(log=lambda msg: None)
    return cache


@pytest.fixture
def official_tokenizer() -> Path:
    if not OFFICIAL_TOKENIZER.is_file():
        pytest.skip(f"official tokenizer not found at {OFFICIAL_TOKENIZER} (../shared is absent in a fresh clone)")
    return OFFICIAL_TOKENIZER


# Ctrl-C. Many tests call `pgolf_core.cli.main` in-process, and `main` turns KeyboardInterrupt into
# "pgolf: interrupted" and exit 130, as the real command must. A Ctrl-C arriving inside such a test would
# only fail that one test and pytest would go on. So a SIGINT is recorded before it is raised, and the
# test phase it arrived in re-raises it once the phase ends: pytest then stops as on any Ctrl-C (exit 2,
# "KeyboardInterrupt"). A KeyboardInterrupt raised by a test itself (no signal) stays an ordinary exception.
SIGINT_SEEN = pytest.StashKey[list[int]]()


def pytest_configure(config: pytest.Config) -> None:
    seen: list[int] = []
    config.stash[SIGINT_SEEN] = seen
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (pytest run from a thread)

    def record_and_interrupt(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, record_and_interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGINT, previous))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None]:
    return (yield from _stop_if_interrupted(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None]:
    return (yield from _stop_if_interrupted(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None]:
    return (yield from _stop_if_interrupted(item))


def _stop_if_interrupted(item: pytest.Item) -> Generator[None]:
    """Run one test phase; if a Ctrl-C came during it (even one the code under test swallowed), raise
    KeyboardInterrupt, which pytest does not count as a test failure but as the end of the session."""
    try:
        return (yield)
    finally:
        if item.config.stash[SIGINT_SEEN]:
            raise KeyboardInterrupt
