"""Storage accounting of sparse weights: compressed sparse row (CSR) bits and the compression rate they give.

The "values + indices" accounting of Han et al. (Deep Compression) and of the Sparse Variational Dropout
comparisons; :mod:`bayescomp.measure` re-exports it beside the other measurements.
"""

from __future__ import annotations

import math

import torch


def _ceil_log2(n: int) -> int:
    """``ceil(log2(n))`` for ``n >= 1``, exactly in integers."""
    return (int(n) - 1).bit_length()


def csr_storage_bits(weight: torch.Tensor, value_bits: int = 32) -> int:
    """Bits to store ``weight`` in compressed sparse row (CSR) format: values + column indices + row pointers.

    The weight is viewed as a matrix with one row per output unit: ``(out, in)`` for Linear, ``(C_out,
    C_in * kh * kw)`` for a conv weight ``(C_out, C_in, kh, kw)`` (any tensor of 2+ dims: first dim x rest).
    With ``nnz`` non-zero entries (``-0.0`` is zero), ``n_rows`` rows and ``n_cols`` columns::

        nnz * value_bits                                  (the non-zero values)
      + nnz * max(1, ceil(log2(n_cols)))                  (a column index per value)
      + (n_rows + 1) * max(1, ceil(log2(nnz + 1)))        (row pointers into the value array, 0..nnz)

    Nothing else is counted (no shape, bit width or quantisation step), so this is the "values + indices"
    accounting of the papers, not a file size. Index widths are the fewest fixed bits, not an entropy code.

    Raises:
        ValueError: ``weight`` has fewer than 2 dims, or ``value_bits`` is not a positive integer.
    """
    if weight.dim() < 2:
        raise ValueError(f"csr_storage_bits needs a weight of 2 or more dims, got shape {list(weight.shape)}")
    if isinstance(value_bits, bool) or int(value_bits) != value_bits or value_bits < 1:
        raise ValueError(f"value_bits must be a positive integer, got {value_bits!r}")
    n_rows = int(weight.shape[0])
    n_cols = weight.numel() // n_rows if n_rows else math.prod(weight.shape[1:])
    nnz = int(torch.count_nonzero(weight.detach()))
    column_bits = max(1, _ceil_log2(max(n_cols, 1)))
    pointer_bits = max(1, _ceil_log2(nnz + 1))
    return nnz * int(value_bits) + nnz * column_bits + (n_rows + 1) * pointer_bits


def compression_csr(dense_weights: int, weights: list[torch.Tensor],
                    value_bits: list[int] | int = 32) -> float:
    """Compression rate under CSR accounting: ``32 * dense_weights / sum(csr_storage_bits(w, bits))``.

    ``dense_weights`` is the weight count of the reference float32 model (:func:`bayescomp.measure.count_weights`), ``weights``
    the compressed model's Linear/Conv2d weight tensors and ``value_bits`` the bits per stored value, one for
    all or one per tensor. Biases are not counted on either side. A dense weight gives a rate below 1, since
    its indices cost extra.

    Raises:
        ValueError: no weights, or a ``value_bits`` list of another length.
    """
    weights = list(weights)
    if not weights:
        raise ValueError("compression_csr needs at least one weight tensor")
    bits = [value_bits] * len(weights) if isinstance(value_bits, int) else list(value_bits)
    if len(bits) != len(weights):
        raise ValueError(f"got {len(bits)} value_bits for {len(weights)} weights")
    total = sum(csr_storage_bits(w, b) for w, b in zip(weights, bits))
    return 32.0 * dense_weights / total
