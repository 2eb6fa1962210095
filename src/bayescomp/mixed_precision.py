"""Mixed precision for training: whether this CPU computes bfloat16 natively, and the autocast forward.

Measured on this project's machine (AMD Zen 5, AVX-512 with native bf16; benchmarks/results/epoch_cost_*.md):
bf16 autocast makes the Bayesian training step faster with the same accuracy (precision_parity_*.md); on a CPU
without native bf16, oneDNN emulates it and it is slower, so ``auto`` picks it only where it is native.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "auto")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether this CPU computes bfloat16 products natively (AVX512-BF16 or AMX-BF16), detected, not guessed:
    PyTorch's own CPUID checks where it has them, else the ``/proc/cpuinfo`` flags ``avx512_bf16`` / ``amx_bf16``.
    Without them oneDNN emulates bf16 and autocast is slower than float32. Other devices: False (not measured)."""
    if device_type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None and check() for check in checks):
        return True
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"`` for a requested ``fp32 | bf16 | auto``; auto picks bf16 only where
    :func:`native_bf16` holds (measured faster there with the same accuracy: benchmarks/results/epoch_cost*.md,
    precision_parity*.md)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    return precision


class AutocastForward(nn.Module):
    """Runs ``net``'s forward under bfloat16 autocast and returns float32 outputs (mixed precision).

    Only the layer products (matmuls, convolutions, including the Bayesian layers' variance products) run in
    bfloat16; parameters, their gradients, the optimiser state, the KL and the loss stay float32. bfloat16 keeps
    float32's exponent range, so the posterior variances exp(log sigma^2) (down to about e^-20 here) neither underflow
    nor lose their scale, which float16 (smallest normal 6e-5) would; their products carry 8 significant bits, enough
    for a noise standard deviation. The variance parameters therefore train in float32 as before.
    """

    def __init__(self, net: nn.Module, device_type: str) -> None:
        super().__init__()
        self.net, self.device_type = net, device_type

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.net(images)
        return out.float() if isinstance(out, torch.Tensor) else out
