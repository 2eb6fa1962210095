"""Standard normal noise for the Bayesian layers' training forward, drawn on every intra-op thread when it is large.

PyTorch fills a CPU tensor with normal numbers on one thread whatever ``torch.get_num_threads()`` says (its
Mersenne-Twister generator is sequential): measured ~3.5 ns a number on this project's 2-core CPU, i.e. 7 ms for
the 1.9 M pre-activation noises of one LeNet-5 step, about a fifth of the BC-GNJ step at 2 threads, and the one
part of the step a second thread did not speed up. Every Bayesian method samples such noise (local
reparameterisation: one number per output activation), so the draw is the Amdahl term of multi-threaded training.

:func:`standard_normal` therefore splits a draw of more than :data:`CHUNK` numbers into chunks of :data:`CHUNK`,
fills each with its own ``torch.Generator`` seeded by one ``randint`` on the default generator, and spreads the
chunks over the intra-op threads (Python threads: the fill releases the GIL). The chunking does not depend on the
thread count, so a seed gives the same noise on 1 or 16 threads, and a checkpoint's saved default-generator state
resumes it exactly. The numbers are standard normal as before, but not the same numbers as ``torch.randn``'s single
stream: :func:`parallel_noise` (``False``) restores that stream, e.g. to compare against code that calls
``torch.randn`` directly. Draws of at most :data:`CHUNK` numbers, and every draw on an accelerator (whose generator
is parallel already), are plain ``torch.randn``.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

CHUNK = 1 << 17  # numbers per generator: ~0.45 ms of filling, well above a thread hand-off (~20-50 us)
_SEED_BOUND = 1 << 62
_state = threading.local()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_owner: tuple[int, int] | None = None  # (pid, workers): a forked child or a new thread count gets a new pool


def parallel_enabled() -> bool:
    """Whether large CPU draws are chunked (the default) in this thread."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def parallel_noise(enabled: bool) -> Iterator[None]:
    """Within the block, large CPU draws are chunked (``True``, the default) or ``torch.randn``'s single stream."""
    previous = parallel_enabled()
    _state.enabled = bool(enabled)
    try:
        yield
    finally:
        _state.enabled = previous


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_owner
    owner = (os.getpid(), workers)
    with _pool_lock:
        if _pool is None or _pool_owner != owner:
            if _pool is not None and _pool_owner is not None and _pool_owner[0] == owner[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bayescomp-noise")
            _pool_owner = owner
        return _pool


def _fill(flat: torch.Tensor, seeds: list[int], first: int, last: int) -> None:
    generator = torch.Generator()
    for k in range(first, last):
        generator.manual_seed(seeds[k])
        flat[k * CHUNK:(k + 1) * CHUNK].normal_(generator=generator)


def standard_normal(shape: Sequence[int], dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """A contiguous tensor of i.i.d. N(0, 1) numbers; large CPU draws are chunked and filled in parallel (module
    docstring)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    numel = math.prod(shape)
    if device.type != "cpu" or numel <= CHUNK or not parallel_enabled():
        return torch.randn(*shape, dtype=dtype, device=device)
    out = torch.empty(*shape, dtype=dtype)
    flat = out.view(-1)
    chunks = math.ceil(numel / CHUNK)
    seeds = torch.randint(0, _SEED_BOUND, (chunks,), dtype=torch.int64).tolist()
    threads = min(torch.get_num_threads(), chunks)
    if threads <= 1:
        _fill(flat, seeds, 0, chunks)
        return out
    bounds = [round(i * chunks / threads) for i in range(threads + 1)]
    pool = _executor(threads - 1)
    futures = [pool.submit(_fill, flat, seeds, bounds[i], bounds[i + 1]) for i in range(1, threads)]
    _fill(flat, seeds, bounds[0], bounds[1])
    for future in futures:
        future.result()
    return out


def standard_normal_like(t: torch.Tensor) -> torch.Tensor:
    """N(0, 1) noise of ``t``'s shape, dtype and device, contiguous (see :func:`standard_normal`)."""
    return standard_normal(t.shape, dtype=t.dtype, device=t.device)
