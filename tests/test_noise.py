"""The training noise: the compiled Philox4x32-10 + Box-Muller kernel against the published test vectors, its own
scalar path and the normal distribution, and the noise source switch with its fallbacks."""

from __future__ import annotations

import ctypes
import math

import pytest
import torch

from bayescomp import native
from bayescomp.noise import (NOISE_SOURCES, SMALL, effective_noise_source, set_noise_source, standard_normal,
                             standard_normal_like)

# Random123's known-answer vectors for Philox4x32-10 (Salmon et al. 2011): counter, key, output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.fixture
def fresh_source(monkeypatch):
    """Each test chooses its own source; the process-wide choice is restored afterwards."""
    monkeypatch.setattr("bayescomp.noise._source", {"name": None})
    yield


@pytest.fixture
def lib():
    library = native.library()
    assert library is not None, f"the native kernel did not build here: {native.unavailable_reason()}"
    return library


def _fill_at(lib, n: int, seed: int, first_block: int, portable: bool) -> torch.Tensor:
    out = torch.empty(n)
    lib.bc_normal_fill_at(out.data_ptr(), n, seed, first_block, int(portable))
    return out


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_reproduces_the_published_test_vectors(lib, counter, key, expected):
    out = (ctypes.c_uint32 * 4)()
    lib.bc_philox4x32_10((ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), out)
    assert tuple(out) == expected


def _box_muller_reference(block: int, seed: int, lib) -> list[float]:
    """The four numbers of one block computed here from the scalar Philox words, in float64."""
    out = (ctypes.c_uint32 * 4)()
    lib.bc_philox4x32_10((ctypes.c_uint32 * 4)(block & 0xFFFFFFFF, block >> 32, 0, 0),
                         (ctypes.c_uint32 * 2)(seed & 0xFFFFFFFF, seed >> 32), out)
    u = [w >> 8 for w in out]
    r0 = math.sqrt(-2 * math.log((u[0] + 0.5) / 2 ** 24))
    r1 = math.sqrt(-2 * math.log((u[2] + 0.5) / 2 ** 24))
    t0, t1 = 2 * math.pi * u[1] / 2 ** 24, 2 * math.pi * u[3] / 2 ** 24
    return [r0 * math.cos(t0), r0 * math.sin(t0), r1 * math.cos(t1), r1 * math.sin(t1)]


def test_the_fill_is_box_muller_of_the_philox_words(lib):
    seed = 0x1234_5678_9ABC_DEF0
    fill = _fill_at(lib, 4 * 40, seed, 0, False)
    reference = torch.tensor([v for block in range(40) for v in _box_muller_reference(block, seed, lib)],
                             dtype=torch.float64)
    assert torch.allclose(fill.double(), reference, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 3, 5, 63, 64, 65, 1023, 1024, 1025, 4097, 100_003])
def test_the_vector_path_gives_the_scalar_path_s_stream_and_prefixes_agree(lib, n):
    seed = 2 ** 40 + 7
    vector, scalar = _fill_at(lib, n, seed, 0, False), _fill_at(lib, n, seed, 0, True)
    assert torch.allclose(vector, scalar, atol=1e-6, rtol=0)
    longer = _fill_at(lib, n + 7, seed, 0, False)
    assert torch.equal(longer[:n], vector)


def test_the_block_counter_carries_into_its_high_word(lib):
    """Blocks 2^32 - 5 .. 2^32 + 26 straddle the low word's wrap-around inside one vector of counters."""
    first, seed = 2 ** 32 - 5, 99
    vector, scalar = _fill_at(lib, 4 * 32, seed, first, False), _fill_at(lib, 4 * 32, seed, first, True)
    assert torch.allclose(vector, scalar, atol=1e-6, rtol=0)
    reference = torch.tensor([v for block in range(first, first + 32)
                              for v in _box_muller_reference(block, seed, lib)], dtype=torch.float64)
    assert torch.allclose(vector.double(), reference, atol=2e-5, rtol=1e-5)


def test_bfloat16_draws_are_the_float_draws_rounded_to_nearest_even(lib):
    for n in (1, 5, 1000, 4099):
        wide, narrow = torch.empty(n), torch.empty(n, dtype=torch.bfloat16)
        lib.bc_normal_fill(wide.data_ptr(), n, 31)
        lib.bc_normal_fill_bf16(narrow.data_ptr(), n, 31)
        assert torch.equal(narrow, wide.to(torch.bfloat16))


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def test_draws_follow_the_standard_normal(lib):
    n = 2_000_000
    z = _fill_at(lib, n, 2024, 0, False).double()
    se = 1 / math.sqrt(n)
    assert abs(float(z.mean())) < 5 * se
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2) * se
    assert abs(float((z ** 3).mean())) < 5 * math.sqrt(15) * se  # skewness 0
    assert abs(float((z ** 4).mean()) - 3) < 5 * math.sqrt(96) * se  # kurtosis 3
    # Kolmogorov-Smirnov distance to N(0, 1); 1.63 / sqrt(n) is the 1 % critical value
    ordered = torch.sort(z).values
    cdf = _normal_cdf(ordered)
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float(torch.maximum(grid - cdf, cdf - (grid - 1 / n)).max()) < 1.63 / math.sqrt(n)
    assert float(z.abs().max()) < 6.0  # 24-bit uniforms: nothing beyond ~5.9


def test_draws_are_uncorrelated_at_short_lags_and_within_a_pair(lib):
    z = _fill_at(lib, 1_000_000, 7, 0, False).double()
    for lag in (1, 2, 3, 4, 16):
        for values in (z, z * z - 1):  # the squares catch dependence that correlation of the values misses
            r = float((values[:-lag] * values[lag:]).mean() / values.var())
            assert abs(r) < 5e-3, (lag, r)


def test_seeding_through_torch_fixes_the_stream(fresh_source):
    set_noise_source("philox")
    torch.manual_seed(5)
    a, b = standard_normal(40, 50), standard_normal(40, 50)
    torch.manual_seed(5)
    assert torch.equal(a, standard_normal(40, 50)) and torch.equal(b, standard_normal(40, 50))
    assert not torch.equal(a, b)
    torch.manual_seed(6)
    assert not torch.equal(a, standard_normal(40, 50))
    torch.manual_seed(5)
    assert not torch.equal(a, torch.randn(40, 50))  # the kernel's stream, not PyTorch's


def test_the_torch_source_is_torch_randn(fresh_source):
    set_noise_source("torch")
    torch.manual_seed(11)
    a = standard_normal(30, 40)
    torch.manual_seed(11)
    assert torch.equal(a, torch.randn(30, 40)) and effective_noise_source() == "torch"


def test_dtypes_and_shapes(fresh_source):
    set_noise_source("philox")
    assert standard_normal(2, 3, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert standard_normal(0, 5).shape == (0, 5)
    torch.manual_seed(2)
    double = standard_normal(50, dtype=torch.float64)  # float64 stays with PyTorch's generator
    torch.manual_seed(2)
    assert torch.equal(double, torch.randn(50, dtype=torch.float64))
    like = standard_normal_like(torch.empty(40, 60, dtype=torch.bfloat16))
    assert like.shape == (40, 60) and like.dtype == torch.bfloat16
    torch.manual_seed(4)
    small = standard_normal(SMALL - 1)  # too few numbers to pay for the kernel's call
    torch.manual_seed(4)
    assert torch.equal(small, torch.randn(SMALL - 1))


def test_unknown_sources_are_refused(fresh_source, monkeypatch):
    with pytest.raises(ValueError, match="noise source must be one of"):
        set_noise_source("mersenne")
    monkeypatch.setenv("BAYESCOMP_NOISE", "fast")
    with pytest.raises(ValueError, match="noise source must be one of"):
        effective_noise_source()
    assert set(NOISE_SOURCES) == {"auto", "philox", "torch"}


@pytest.fixture
def no_cached_library(monkeypatch, tmp_path):
    """A fresh look for the kernel, building into an empty cache; the process's library is restored after."""
    monkeypatch.setenv("BAYESCOMP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("bayescomp.noise._source", {"name": None})
    native.reset()
    yield tmp_path
    native.reset()


def test_turned_off_the_kernel_falls_back_to_torch_and_says_why(no_cached_library, monkeypatch):
    monkeypatch.setenv("BAYESCOMP_NATIVE", "0")
    assert native.library() is None and "BAYESCOMP_NATIVE" in native.unavailable_reason()
    assert effective_noise_source() == "torch"
    torch.manual_seed(1)
    a = standard_normal(80, 80)
    torch.manual_seed(1)
    assert torch.equal(a, torch.randn(80, 80))
    with pytest.raises(RuntimeError, match="philox noise source is unavailable: turned off"):
        set_noise_source("philox")


def test_a_compiler_that_fails_leaves_a_reason_and_torch_noise(no_cached_library, monkeypatch, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'no compiling today' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert native.library() is None
    assert "could not compile" in native.unavailable_reason() and "no compiling today" in native.unavailable_reason()
    assert effective_noise_source() == "torch"


def test_the_kernel_is_built_once_into_the_cache_and_reused(no_cached_library):
    assert native.library() is not None
    built = list((no_cached_library / "native").glob("bayescomp_native_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native.reset()
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert [p.name for p in (no_cached_library / "native").iterdir()] == [built[0].name]  # no temporary left
