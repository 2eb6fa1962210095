"""Atomic checkpoints that survive interruptions, detect corruption and never run code when loaded.

A checkpoint is written to a temporary file in the same directory, flushed to disk and moved over the old one
with ``os.replace`` (atomic on POSIX), so a crash mid-write never leaves a half-written file behind; a ``.tmp``
left by a kill during the write is deleted the next time the checkpoint is loaded. The previous checkpoint is
kept as ``<name>.prev``; if the newest cannot be read, or its content does not match its checksum, loading
falls back to it (and renames the bad file ``<name>.corrupt`` for inspection) instead of losing the run.

File layout (version 2): one header line ``BAYESCOMP-CKPT 2 sha256=<hex>\\n`` followed by the bytes of a
``torch.save`` of the state. The SHA-256 covers every payload byte, so a zeroed or flipped block anywhere is
caught, not only truncation. The payload is read with ``torch.load(weights_only=True)``: only tensors and plain
Python containers/scalars, never a pickled callable. NumPy arrays (the NumPy RNG state) are stored as tensors
plus their dtype name so that the restricted loader needs no extra allowed types.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"BAYESCOMP-CKPT 2 sha256="
#: what :func:`training_state` writes and a resumed run reads
TRAINING_KEYS = ("model", "optimizer", "scheduler", "epoch", "train_config", "torch_rng", "python_rng", "numpy_rng",
                 "history")
_ARRAY_TAG = "__bayescomp_ndarray__"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read (corrupt, truncated, unsafe, or not a bayescomp checkpoint)."""


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``, then fsync of the directory so
    the rename itself survives a crash). The one atomic writer of bayescomp: checkpoints and packed files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable where the platform allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def safe_torch_load(source: str | os.PathLike | io.BytesIO, name: str | os.PathLike, what: str) -> Any:
    """``torch.load(weights_only=True)``; a file that needs more than tensors and plain containers is refused.

    Args:
        name: the file named in errors. what: what kind of file it is ("checkpoint", "hypernetwork file", ...).

    Raises:
        CheckpointError: the file is unreadable, or it would need arbitrary code to load (refused, not run).
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - unpickling/zip failures surface as many exception types
        text = str(error)
        if isinstance(error, pickle.UnpicklingError) and "global" in text.lower():
            reason = next((line for line in text.splitlines() if "global" in line.lower()), "").strip()[:300]
            raise CheckpointError(
                f"{what} {name} refused: it names Python objects that would run code when loaded ({reason}); "
                "only tensors and plain values are allowed. Nothing was executed. Do not use this file; "
                "recreate it with bayescomp."
            ) from None
        raise CheckpointError(f"{what} {name} cannot be read ({type(error).__name__}: {_short(text)}); it is "
                              "corrupt or truncated") from None


def _short(text: str) -> str:
    """The informative line of a torch.load error (its boilerplate suggests switching the weights-only guard off:
    not for us)."""
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(skip)]
    return (lines[0] if lines else text)[:300]


def _encode(value: Any) -> Any:
    """NumPy arrays/scalars -> tensors / Python scalars, recursively, so ``weights_only`` loading suffices."""
    if isinstance(value, np.ndarray):
        return {_ARRAY_TAG: torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value.copy()),
                "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(item) for item in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _ARRAY_TAG in value:
            return value[_ARRAY_TAG].numpy().astype(np.dtype(value["dtype"]))
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(item) for item in value)
    return value


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` atomically with a SHA-256 header, keeping the previous checkpoint as ``<path>.prev``."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(_encode({"format": "bayescomp-checkpoint", "version": 2, **state}), buffer)
    payload = buffer.getvalue()
    header = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    atomic_write_bytes(header + payload, path)


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read ({error})") from None
    if raw.startswith(MAGIC):
        end = raw.find(b"\n", len(MAGIC))
        digest, payload = raw[len(MAGIC):end].decode("ascii", "replace"), raw[end + 1:]
        if end < 0 or hashlib.sha256(payload).hexdigest() != digest:
            raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its SHA-256 checksum")
        state = safe_torch_load(io.BytesIO(payload), path, "checkpoint")
    else:  # version 1 (no checksum) or not a checkpoint at all; still only the restricted loader
        state = safe_torch_load(path, path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != "bayescomp-checkpoint":
        raise CheckpointError(f"{path} is not a bayescomp checkpoint")
    required = TRAINING_KEYS if "model" in state else ("epoch",)  # a trainer's state needs all of its parts
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the keys {missing}; it was not written by bayescomp")
    state = _decode(state)
    state["checkpoint_file"] = str(path)
    return state


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files that a kill during :func:`save_checkpoint` left beside ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for item in stale:
        item.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """Load a checkpoint; ``None`` if none exists. ``state["checkpoint_file"]`` names the file actually used.

    If the newest file is corrupt (unreadable, checksum mismatch, or unsafe) and ``<path>.prev`` is good, warn,
    move the bad file to ``<path>.corrupt`` and return the previous one (one epoch is lost, not the run).
    Otherwise raise :class:`CheckpointError` saying what to do; the bad file is left untouched.
    """
    path = Path(path)
    remove_stale_temporaries(path)
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


def training_state(model: torch.nn.Module, optimizer, scheduler, epoch: int, config: Any, history: list,
                   **extra: Any) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly: weights, optimiser, schedule, RNG states, history."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "train_config": asdict(config), "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(), "numpy_rng": np.random.get_state(), "history": history, **extra}


def restore_training_state(state: dict[str, Any], model: torch.nn.Module, optimizer, scheduler) -> None:
    """Load a :func:`training_state` checkpoint into the model, optimiser, schedule and the global RNGs."""
    model.load_state_dict(state["model"])
    # how the optimiser runs (fused kernel, capturable for CUDA graphs) belongs to this run, not to the file: a
    # checkpoint written by a CUDA-graph run on a GPU must resume on a CPU, and the other way round
    modes = [{key: group[key] for key in ("fused", "capturable", "foreach") if key in group}
             for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, mode in zip(optimizer.param_groups, modes):
        group.update(mode)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])
