"""Artifact bytes: serialization and atomic writes.

The artifact counted by the challenge is the compressed model file plus the code.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pgolf_core.types import WriteFault


def serialize(obj: Any) -> bytes:
    """`torch.save` into memory: the bytes the compressor sees, as in every record."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def deserialize(raw: bytes) -> Any:
    """`torch.load` with `weights_only=True`: an artifact holds only tensors, dicts and strings,
    so nothing in a downloaded file gets to run code."""
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then `os.replace`: a crash leaves
    either the old file or the complete new one, never a partial artifact."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a run's files from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteFault(path, exc) from exc
        raise
