"""Atomic checkpoints that survive interruptions and detect corruption.

A checkpoint is written to a temporary file in the same directory, flushed to disk and moved over the old one
with ``os.replace`` (atomic on POSIX), so a crash mid-write never leaves a half-written file behind. The
previous checkpoint is kept as ``<name>.prev``; if the newest cannot be read, loading falls back to it (and
renames the bad file ``<name>.corrupt`` for inspection) instead of losing the run.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint could not be read (corrupt, truncated, or not a bayescomp checkpoint)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` atomically, keeping the previous checkpoint as ``<path>.prev``."""
    path = Path(path)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    atomic_torch_save({"format": "bayescomp-checkpoint", "version": 1, **state}, path)


def _read(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling/zip failure means the file is unusable
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("format") != "bayescomp-checkpoint":
        raise CheckpointError(f"{path} is not a bayescomp checkpoint")
    return state


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """Load a checkpoint; ``None`` if none exists.

    If the newest file is corrupt and ``<path>.prev`` is readable, warn, move the bad file to ``<path>.corrupt``
    and return the previous one (one epoch is lost, not the run). Otherwise raise :class:`CheckpointError`
    saying what to do; the bad file is left untouched.
    """
    path = Path(path)
    previous = path.with_name(path.name + ".prev")
    if not path.exists():
        return _read(previous) if previous.exists() else None
    try:
        return _read(path)
    except CheckpointError as error:
        if previous.exists():
            try:
                state = _read(previous)
            except CheckpointError:
                pass
            else:
                os.replace(path, path.with_name(path.name + ".corrupt"))
                warnings.warn(f"{error}; resuming from the previous checkpoint {previous}", stacklevel=2)
                return state
        raise CheckpointError(
            f"{error}. Delete it (or the run directory) to start over, or pass --restart; "
            "nothing was overwritten."
        ) from error
