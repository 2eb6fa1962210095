"""Standard normal noise for the Bayesian layers' training draws: one place that decides where it comes from.

Every training step draws one N(0, 1) number per pre-activation (local reparameterisation), per group scale and
example, or per weight (``weight_sampling="batch"``). On the CPU, PyTorch fills them on one thread with its
Mersenne Twister generator at ~3.5 ns a number (measured on this project's AVX-512 machine: 3.6 ms for 10^6),
which was a fifth of a LeNet-5 step and more of a ResNet-20 one. Sources:

* ``"philox"``: the compiled kernel of :mod:`bayescomp.native`: Philox4x32-10 (Salmon et al., SC 2011; the
  generator behind cuRAND's and JAX's default streams in that family) and the Box-Muller transform, vectorised;
  1.07 ms for 10^6 on the same machine. Each call takes a fresh 64-bit key from PyTorch's default generator, so
  ``torch.manual_seed`` fixes the stream and checkpoints that save PyTorch's RNG state resume it. Uniforms have 24
  bits, so no draw exceeds ~5.9 in magnitude (the normal tail beyond has probability ~4e-9). float64 requests
  keep PyTorch's generator (the kernel makes float32), as do draws of fewer than :data:`SMALL` numbers.
* ``"torch"``: ``torch.randn`` everywhere (the only source on GPUs, and the one before this module existed; use it
  to reproduce an earlier run's draws exactly).
* ``"auto"`` (default): ``"philox"`` for CPU tensors where the kernel builds, else ``"torch"``.

Chosen with :func:`set_noise_source`, or ``BAYESCOMP_NOISE=auto|philox|torch`` for a whole process. Both sources
give the same distribution; they are different streams, so a run's figures change within their seed-to-seed
spread, not beyond it (``benchmarks/results/noise_parity_*.md``).
"""

from __future__ import annotations

import math

import torch

from bayescomp import native
from bayescomp.validate import check_choice, choice_from_env

NOISE_SOURCES = ("auto", "philox", "torch")
_KEY_HIGH = 2 ** 63 - 1
SMALL = 1024  # fewer numbers than this come from torch.randn: the kernel's fixed cost (~5 us a call) is larger
_source = {"name": None}


def check_noise_source(name: str) -> str:
    """Validate a noise source name (one of :data:`NOISE_SOURCES`)."""
    return check_choice(name, NOISE_SOURCES, "noise source")


def set_noise_source(name: str) -> None:
    """Choose where training noise comes from for this process (see the module docstring). ``"philox"`` fails at
    once, with the reason, when the kernel cannot be built here."""
    check_noise_source(name)
    if name == "philox" and native.library() is None:
        raise RuntimeError(f"the philox noise source is unavailable: {native.unavailable_reason()}")
    _source["name"] = name


def requested_noise_source() -> str:
    """The source asked for: :func:`set_noise_source`'s, else ``$BAYESCOMP_NOISE``, else ``"auto"``."""
    if _source["name"] is None:
        _source["name"] = choice_from_env("BAYESCOMP_NOISE", NOISE_SOURCES, "noise source")
    return _source["name"]


def effective_noise_source() -> str:
    """What CPU float32 draws use now: ``"philox"`` or ``"torch"`` (``"auto"`` resolved; builds the kernel on first
    call). Recorded in run records so a run's draws can be reproduced."""
    name = requested_noise_source()
    if name == "auto":
        return "philox" if native.library() is not None else "torch"
    if name == "philox" and native.library() is None:
        raise RuntimeError(f"the philox noise source is unavailable: {native.unavailable_reason()}")
    return name


def _philox_fill(out: torch.Tensor) -> torch.Tensor:
    """Fill a contiguous float32 or bfloat16 CPU tensor with N(0, 1) numbers from the compiled Philox kernel
    (bfloat16: the float32 draws rounded to nearest even, as ``.to(torch.bfloat16)`` would, without the pass)."""
    key = int(torch.randint(0, _KEY_HIGH, (), dtype=torch.int64))
    fill = native.library().bc_normal_fill_bf16 if out.dtype == torch.bfloat16 else native.library().bc_normal_fill
    fill(out.data_ptr(), out.numel(), key)
    return out


@torch.library.custom_op("bayescomp::standard_normal", mutates_args=(),
                         tags=(torch.Tag.nondeterministic_seeded,))
def _standard_normal_op(shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """:func:`standard_normal` on the CPU as one opaque operator, so a compiled training step
    (:mod:`bayescomp.compiled_step`) draws from the same source as the eager one instead of breaking its graph at
    the kernel call. Tagged ``nondeterministic_seeded``: two calls are never merged as common subexpressions."""
    return standard_normal(*shape, dtype=dtype)


@_standard_normal_op.register_fake
def _standard_normal_shape(shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def standard_normal(*shape: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """A contiguous tensor of N(0, 1) numbers of ``shape`` (drop-in for ``torch.randn(*shape, dtype=, device=)``)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cpu" and torch.compiler.is_compiling():
        return _standard_normal_op([int(n) for n in shape], dtype)
    if device.type != "cpu" or dtype == torch.float64 or not dtype.is_floating_point \
            or math.prod(shape) < SMALL or effective_noise_source() != "philox":
        return torch.randn(*shape, dtype=dtype, device=device)
    if dtype in (torch.float32, torch.bfloat16):
        return _philox_fill(torch.empty(*shape, dtype=dtype))
    return _philox_fill(torch.empty(*shape, dtype=torch.float32)).to(dtype)


def standard_normal_like(t: torch.Tensor) -> torch.Tensor:
    """N(0, 1) numbers of ``t``'s shape, dtype, device and memory layout.

    A channels-last (NHWC) tensor gets a contiguous NHWC draw viewed as NCHW: filling a channels-last tensor through
    its strides was measured ~5x slower for LeNet-5's conv outputs, and a contiguous draw in the other layout would
    make every elementwise op after it mix layouts."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = t.shape
        return standard_normal(n, h, w, c, dtype=t.dtype, device=t.device).permute(0, 3, 1, 2)
    return standard_normal(*t.shape, dtype=t.dtype, device=t.device)
