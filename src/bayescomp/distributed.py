"""Data-parallel training with ``torch.distributed`` (DDP), launched through ``torchrun``.

``bayescomp run --nproc N`` re-runs itself under ``torchrun`` (:func:`relaunch_with_torchrun`); every process
then joins one process group (gloo on CPU, nccl when CUDA is available; :func:`init_from_env`). The trainer
(:func:`bayescomp.train.fit`) splits each *global* batch across the ranks and scales the local loss so that the
averaged gradient equals the single-process gradient of the same global batch, with the KL counted once per
model. Only rank 0 writes files; the masks read from the posterior are checked to agree on every rank
(:func:`bayescomp.compress.digest.mask_digest`, :func:`all_equal`).

Nothing here changes single-process behaviour: without ``WORLD_SIZE > 1`` in the environment every helper is a
no-op (rank 0 of 1).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

#: Collective timeout: non-zero ranks wait in a collective while rank 0 alone compresses, fine-tunes and writes
#: the report, which can take longer than torch's 30-minute default on large models. Override with
#: ``BAYESCOMP_DDP_TIMEOUT_S``. (Under torchrun a crashed rank still ends the whole group at once.)
DEFAULT_TIMEOUT_S = 6 * 3600

_suspended = False


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank (and outside :func:`local_only`)."""
    return not _suspended and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (the one that logs and writes files), or the only process."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def backend() -> str | None:
    return str(dist.get_backend()) if is_distributed() else None


def init_from_env() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...) if there is one.

    Idempotent; returns whether the process is now distributed. gloo on CPU, nccl when CUDA is available (the
    library itself trains on the CPU; nccl is chosen for GPU jobs that move the model themselves).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("BAYESCOMP_DDP_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
        atexit.register(_destroy)
    return is_distributed()


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shutdown(success: bool) -> None:
    """Leave the process group on this rank: after a successful run every rank meets at a barrier first, so no
    rank tears its connections down while another still talks to it; after a failure, leave at once (torchrun
    ends the other ranks). Safe to call when no group exists."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if success and dist.get_world_size() > 1:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_worker(main: Any, argv: list[str] | None = None) -> NoReturn:
    """Run ``main(argv)`` as a torchrun worker and exit with its code, the process group torn down cleanly.

    A worker that returned from ``main`` used to leave the group to interpreter shutdown (``atexit``), where the
    gloo/nccl threads could still be running while C++ destructors ran: the rank then died with SIGABRT
    ("terminate called without an active exception") after a complete, correct run, and torchrun reported
    failure. Here the group is destroyed explicitly on every path, the streams are flushed, and the process
    leaves with ``os._exit`` so that no destructor of a background thread can change the exit code.
    """
    import traceback

    code = 1
    try:
        code = int(main(argv) or 0)
    except SystemExit as stop:  # argparse and friends
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported, then the group is left and the worker exits non-zero
        traceback.print_exc()
        code = 1
    try:
        shutdown(code == 0)
    except Exception as error:  # noqa: BLE001 - a failed teardown must not hide the run's own result
        print(f"bayescomp: warning: leaving the process group failed ({error})", file=sys.stderr)
        code = code or 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def in_torchrun_worker() -> bool:
    """Whether this process is a rank started by torchrun (``LOCAL_RANK`` and ``WORLD_SIZE > 1`` set)."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside, this process behaves as a single process (no DDP wrapping, no collectives, is_main() True).

    Rank 0 uses it for work it does alone after training (threshold search, fine-tuning the pruned model) while
    the other ranks wait for its result.
    """
    global _suspended
    previous, _suspended = _suspended, True
    try:
        yield
    finally:
        _suspended = previous


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a picklable object), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_equal(obj: Any) -> bool:
    """Whether every rank holds an equal ``obj`` (compared with ``==`` after gathering)."""
    gathered = all_gather(obj)
    return all(item == gathered[0] for item in gathered[1:])


def all_true(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank (used so that all ranks take the same branch)."""
    return all(all_gather(bool(flag)))


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable object)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard(n: int) -> tuple[int, int]:
    """Bounds ``(lo, hi)`` of this rank's contiguous share of ``n`` items, as ``torch.tensor_split`` splits them
    (the first ``n % W`` ranks get one more)."""
    w, r = world_size(), rank()
    q, m = divmod(n, w)
    lo = r * q + min(r, m)
    return lo, lo + q + (1 if r < m else 0)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command that runs ``bayescomp <argv>`` on ``nproc`` local processes (console shows rank 0;
    a failing rank still ends the group and is reported by torchrun)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "--local-ranks-filter=0", "-m", "bayescomp.cli", *argv]


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``bayescomp <argv>`` under torchrun with ``nproc`` processes; return its exit code.

    Each rank gets ``cpu_count // nproc`` intra-op threads (``OMP_NUM_THREADS``) unless the user set it, so the
    ranks do not oversubscribe the cores.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        return subprocess.run(torchrun_command(nproc, argv), env=env).returncode
    except KeyboardInterrupt:
        return 130
