"""The layers' noise: large CPU draws chunked over threads, reproducible, standard normal, fork-safe."""

from __future__ import annotations

import math
import multiprocessing

import pytest
import torch

from bayescomp.priors.fused import noise_like
from bayescomp.priors.noise import CHUNK, parallel_noise, standard_normal

LARGE = (3 * CHUNK + 12345,)  # four chunks, the last one partial


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_small_draws_are_torch_randn():
    torch.manual_seed(3)
    ours = standard_normal((128, 300))
    torch.manual_seed(3)
    assert torch.equal(ours, torch.randn(128, 300))


def test_switching_off_gives_torch_randn_stream():
    torch.manual_seed(4)
    with parallel_noise(False):
        ours = standard_normal(LARGE)
    torch.manual_seed(4)
    assert torch.equal(ours, torch.randn(*LARGE))


def test_same_seed_same_noise_on_one_and_two_threads(two_threads):
    torch.manual_seed(5)
    on_two = standard_normal(LARGE)
    torch.set_num_threads(1)
    torch.manual_seed(5)
    on_one = standard_normal(LARGE)
    assert torch.equal(on_one, on_two)
    torch.manual_seed(6)
    assert not torch.equal(standard_normal(LARGE), on_one)


def test_resumes_from_saved_generator_state(two_threads):
    torch.manual_seed(7)
    standard_normal(LARGE)
    state = torch.get_rng_state()
    expected = standard_normal(LARGE)
    torch.set_rng_state(state)
    assert torch.equal(standard_normal(LARGE), expected)


def test_chunks_are_independent_standard_normals(two_threads):
    torch.manual_seed(8)
    x = standard_normal((16 * CHUNK,)).double()
    n = x.numel()
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    # the empirical CDF at a few points against Phi (Kolmogorov bound with a wide margin)
    for point in (-2.0, -1.0, 0.0, 0.5, 1.5):
        phi = 0.5 * (1 + math.erf(point / math.sqrt(2)))
        assert abs((x <= point).double().mean().item() - phi) < 2.0 / math.sqrt(n)
    chunks = x.view(16, CHUNK)
    corr = torch.corrcoef(chunks)
    off_diagonal = corr[~torch.eye(16, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 5 / math.sqrt(CHUNK)  # no two chunks share a stream
    lag1 = torch.corrcoef(torch.stack([x[:-1], x[1:]]))[0, 1].item()
    assert abs(lag1) < 5 / math.sqrt(n)


def test_dtype_shape_and_channels_last_layout(two_threads):
    y = standard_normal((64, 40, 24, 24), dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.shape == (64, 40, 24, 24) and y.is_contiguous()
    assert 0.95 < y.float().std().item() < 1.05
    nhwc = torch.empty(64, 40, 24, 24).to(memory_format=torch.channels_last)
    noise = noise_like(nhwc)
    assert noise.shape == nhwc.shape and noise.is_contiguous(memory_format=torch.channels_last)


def _draw_in_child(queue) -> None:
    torch.set_num_threads(2)  # the draw's chunks go to this process's own worker thread
    noise = standard_normal(LARGE)
    torch.set_num_threads(1)  # a parallel reduction after fork would hang in GNU OpenMP (not ours to test)
    queue.put(float(noise.std()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_forked_child_draws_without_hanging(two_threads):
    standard_normal(LARGE)  # the parent's worker pool exists now; a forked child must not reuse its dead threads
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_draw_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("a forked child hung drawing noise")
    assert child.exitcode == 0
    assert 0.95 < queue.get(timeout=5) < 1.05
