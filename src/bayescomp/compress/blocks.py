"""Block regularity of sparse weights, and a block-sparse Linear used where it is measured faster.

Structured priors (Turbo-VBI) aim at sparsity whose survivors form regular blocks. :func:`regularity_metrics`
scores how blocky any method's compressed weights are, viewing each weight as its GEMM matrix
(:func:`gemm_view`) cut into ``block`` tiles from the top-left (edge tiles keep only the entries that exist).

:class:`BlockSparseLinear` executes a Linear from its non-zero tiles only. With square blocks it uses torch's
BSR layout (``torch.sparse_bsr_tensor`` @ dense, MKL-backed on CPU). MKL rejects non-square blocks (and a
build may lack the kernel); then it gathers the input slices of the non-zero blocks, multiplies them with
``torch.bmm`` and sums them into the output with ``index_add_``: block-sparse too, but it only pays off for
large blocks or very sparse weights. :func:`choose_block_format` swaps a Linear only where measured faster.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_COUNT_KEYS = ("nonzero_weights", "nonzero_blocks", "dense_blocks", "weights_in_dense_blocks", "empty_rows",
               "empty_columns", "blocks_total", "row_runs")


def _check_block(block: tuple[int, int]) -> tuple[int, int]:
    if len(block) != 2 or int(block[0]) < 1 or int(block[1]) < 1:
        raise ValueError(f"block must be two positive ints, got {block!r}")
    return int(block[0]), int(block[1])


def gemm_view(weight: Tensor) -> Tensor:
    """The weight as its GEMM matrix: Linear ``(out, in)`` as is, Conv2d ``(out, in, kh, kw)`` as
    ``(out, in * kh * kw)`` (one filter per row, each kernel slice a run of ``kh * kw`` columns)."""
    if weight.dim() < 2:
        raise ValueError(f"gemm_view needs a weight of 2 or more dims, got shape {list(weight.shape)}")
    return weight.detach().reshape(weight.shape[0], -1)


def _tiles(matrix: Tensor, block: tuple[int, int], fill: float) -> Tensor:
    """``(n_block_rows, n_block_cols, bh * bw)`` tiles of a 2-D tensor, padded at the bottom/right with
    ``fill``."""
    bh, bw = block
    rows, cols = matrix.shape
    nbr, nbc = -(-rows // bh), -(-cols // bw)
    padded = F.pad(matrix, (0, nbc * bw - cols, 0, nbr * bh - rows), value=fill)
    return padded.reshape(nbr, bh, nbc, bw).permute(0, 2, 1, 3).reshape(nbr, nbc, bh * bw)


def _ratios(counts: dict[str, int]) -> dict[str, float]:
    nnz = counts["nonzero_weights"]
    return {
        "dense_block_share": counts["weights_in_dense_blocks"] / nnz if nnz else 0.0,
        "blocks_per_nonzero": counts["nonzero_blocks"] / nnz if nnz else 0.0,
        "mean_row_run": nnz / counts["row_runs"] if counts["row_runs"] else 0.0,
    }


def layer_regularity(weight: Tensor, block: tuple[int, int] = (4, 4)) -> dict[str, float | int]:
    """Block and run statistics of one weight's non-zero pattern (``-0.0`` is zero).

    A tile is *non-zero* with at least one non-zero entry and *dense* when all its existing entries are
    non-zero. Besides the documented keys, ``blocks_total`` (tiles) and ``row_runs`` (maximal runs of
    consecutive non-zeros along rows) are returned, so that totals over layers can be recomputed exactly.
    """
    block = _check_block(block)
    nz = gemm_view(weight) != 0
    # entries: 1 non-zero, 0 zero, -1 padding that does not exist
    tiles = _tiles(nz.to(torch.int8), block, fill=-1)
    per_tile = (tiles == 1).sum(-1)
    dense = per_tile == (tiles >= 0).sum(-1)
    starts = nz.clone()
    starts[:, 1:] &= ~nz[:, :-1]
    counts = {
        "nonzero_weights": int(nz.sum()),
        "nonzero_blocks": int((per_tile > 0).sum()),
        "dense_blocks": int(dense.sum()),
        "weights_in_dense_blocks": int(per_tile[dense].sum()),
        "empty_rows": int((~nz.any(1)).sum()),
        "empty_columns": int((~nz.any(0)).sum()),
        "blocks_total": int(per_tile.numel()),
        "row_runs": int(starts.sum()),
    }
    return {**counts, **_ratios(counts), "shape": list(nz.shape)}


def regularity_metrics(weights: list[Tensor], block: tuple[int, int] = (4, 4)) -> dict[str, Any]:
    """Totals of :func:`layer_regularity` over layers, plus ``block`` and the per-layer dicts (``layers``).

    Counts are summed; shares and ratios are recomputed from the sums (``mean_row_run`` is thus the
    run-count-weighted mean of the layers'); ``shape`` is the list of the layers' GEMM shapes.
    """
    block = _check_block(block)
    layers = [layer_regularity(w, block) for w in weights]
    counts = {key: sum(int(layer[key]) for layer in layers) for key in _COUNT_KEYS}
    return {**counts, **_ratios(counts), "shape": [layer["shape"] for layer in layers], "block": list(block),
            "layers": layers}


@functools.cache
def _bsr_supported(block: tuple[int, int]) -> bool:
    """Whether this torch build multiplies a BSR matrix with these blocks by a dense one on CPU."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Sparse BSR tensor support is in beta state"
            weight = torch.ones(2 * block[0], 2 * block[1])
            result = weight.to_sparse_bsr(block) @ torch.ones(2 * block[1], 3)
        return bool(torch.allclose(result, weight @ torch.ones(2 * block[1], 3)))
    except (RuntimeError, NotImplementedError):
        return False


class BlockSparseLinear(nn.Module):
    """Drop-in for an nn.Linear whose weight is block-sparse, stored in torch's BSR layout.

    Only the non-zero ``block`` tiles are kept (``values``: ``(n_blocks, bh, bw)``, with their block row and
    column indices, sorted row-major); shapes that are not multiples of the block are zero-padded inside.
    The BSR tensor is rebuilt from these at every call (~3 us), since a BSR tensor cannot be deep-copied
    and ``F.linear`` fails on one made outside ``inference_mode`` when called inside it. ``backend`` is
    ``"bsr"`` (``torch.addmm`` with the BSR matrix; the output is then a transposed view, so use
    ``reshape`` rather than ``view`` on it) or ``"gather"`` (``index_select`` + ``bmm`` + ``index_add_``, for
    non-square blocks, which MKL rejects). Inference only: no gradients flow.
    """

    def __init__(self, values: Tensor, block_rows: Tensor, block_cols: Tensor, in_features: int,
                 out_features: int, bias: Tensor | None = None, backend: str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.block = (int(values.shape[1]), int(values.shape[2]))
        self.backend = backend or ("bsr" if _bsr_supported(self.block) else "gather")
        if self.backend not in ("bsr", "gather"):
            raise ValueError(f"backend must be 'bsr' or 'gather', got {self.backend!r}")
        self.n_block_rows = -(-self.out_features // self.block[0])
        self.n_block_cols = -(-self.in_features // self.block[1])
        rows = block_rows.detach().to(torch.long)
        crow = torch.zeros(self.n_block_rows + 1, dtype=torch.long)
        crow[1:] = torch.bincount(rows, minlength=self.n_block_rows).cumsum(0)
        self.values = nn.Parameter(values.detach().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("block_rows", rows)
        self.register_buffer("block_cols", block_cols.detach().to(torch.long))
        self.register_buffer("crow_indices", crow)

    @classmethod
    def from_linear(cls, layer: nn.Linear, block: tuple[int, int] = (4, 4),
                    backend: str | None = None) -> BlockSparseLinear:
        """Keep the tiles of ``layer.weight`` that hold a non-zero; the layer itself is not changed."""
        block = _check_block(block)
        tiles = _tiles(layer.weight.detach(), block, fill=0.0)
        rows, cols = tiles.ne(0).any(-1).nonzero(as_tuple=True)
        values = tiles[rows, cols].reshape(-1, *block)
        bias = None if layer.bias is None else layer.bias.detach()
        return cls(values, rows, cols, layer.in_features, layer.out_features, bias, backend)

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.n_block_rows * self.block[0], self.n_block_cols * self.block[1]

    @property
    def weight(self) -> Tensor:
        """The dense ``(out, in)`` weight (rebuilt, for code that counts or reads weights)."""
        bh, bw = self.block
        tiles = self.values.new_zeros(self.n_block_rows, self.n_block_cols, bh, bw)
        tiles[self.block_rows, self.block_cols] = self.values.detach()
        dense = tiles.permute(0, 2, 1, 3).reshape(self.padded_shape)
        return dense[:self.out_features, :self.in_features].contiguous()

    def forward(self, x: Tensor) -> Tensor:
        # reshapes, pads and slices only where needed: at batch 1 each costs about a microsecond
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        out_pad, in_pad = self.padded_shape
        if in_pad != self.in_features:
            flat = F.pad(flat, (0, in_pad - self.in_features))
        y = self._bsr(flat) if self.backend == "bsr" else self._gather(flat)
        if out_pad != self.out_features:
            y = y[:, :self.out_features]
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def _padded_bias(self) -> Tensor | None:
        padding = self.padded_shape[0] - self.out_features
        return self.bias if self.bias is None or not padding else F.pad(self.bias, (0, padding))

    def _bsr(self, flat: Tensor) -> Tensor:
        matrix = torch.sparse_bsr_tensor(self.crow_indices, self.block_cols, self.values, self.padded_shape,
                                         check_invariants=False)
        bias = self._padded_bias()
        out = matrix @ flat.T if bias is None else torch.addmm(bias.unsqueeze(1), matrix, flat.T)
        return out.T

    def _gather(self, flat: Tensor) -> Tensor:
        bh, bw = self.block
        n = flat.shape[0]
        pieces = flat.reshape(n, self.n_block_cols, bw).index_select(1, self.block_cols).transpose(0, 1)
        products = torch.bmm(pieces, self.values.transpose(1, 2))  # (n_blocks, n, bh)
        out = flat.new_zeros(self.n_block_rows, n, bh).index_add_(0, self.block_rows, products)
        out = out.permute(1, 0, 2).reshape(n, -1)
        bias = self._padded_bias()
        return out if bias is None else out + bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
                f"nonzero_blocks={self.values.shape[0]}/{self.n_block_rows * self.n_block_cols}, "
                f"backend={self.backend!r}, bias={self.bias is not None}")


def _median_ms_pair(first: nn.Module, second: nn.Module, x: Tensor, repeats: int,
                    warmup: int = 3) -> tuple[float, float]:
    """Median ms of ``first(x)`` and ``second(x)``, timed alternately so that drifts hit both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + repeats):
        for module, sink in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            module(x)
            if i >= warmup:
                sink.append(time.perf_counter() - start)
    return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3)


def _linear_inputs(model: nn.Sequential, x: Tensor) -> dict[int, Tensor]:
    """The input each top-level plain nn.Linear of ``model`` receives on ``x`` (forward hooks)."""
    captured: dict[int, Tensor] = {}

    def hook_for(index: int) -> Any:
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
            captured[index] = inputs[0]
        return hook

    handles = [module.register_forward_hook(hook_for(index))
               for index, module in enumerate(model) if type(module) is nn.Linear]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _decide(index: int, dense: nn.Linear, x: Tensor, block: tuple[int, int], repeats: int,
            min_speedup: float) -> tuple[BlockSparseLinear, dict[str, Any]]:
    """Time one Linear dense and block-sparse on its input ``x``; the candidate and the decision record."""
    with torch.no_grad():  # built outside inference mode, so the swapped model can be copied and reused
        candidate = BlockSparseLinear.from_linear(dense, block)
    with torch.inference_mode():
        dense_ms, block_ms = _median_ms_pair(dense, candidate, x, repeats)
    speedup = dense_ms / max(block_ms, 1e-9)
    return candidate, {
        "layer": index, "shape": [dense.out_features, dense.in_features], "dense_ms": dense_ms,
        "block_ms": block_ms, "speedup": speedup, "used_block_format": bool(speedup >= min_speedup),
        "nonzero_blocks": int(candidate.values.shape[0]),
        "blocks_total": candidate.n_block_rows * candidate.n_block_cols, "backend": candidate.backend,
    }


def choose_block_format(model: nn.Sequential, input_shape: tuple[int, ...], block: tuple[int, int] = (4, 4),
                        batch_size: int = 256, min_speedup: float = 1.1, repeats: int = 30,
                        num_threads: int | None = None) -> tuple[nn.Sequential, list[dict]]:
    """A copy of ``model`` (eval mode) whose Linears run block-sparse where that is measured faster.

    Each top-level plain ``nn.Linear`` (subclasses may change ``forward`` and are left alone) is timed alone
    on its real input (captured with a forward hook on a random batch of ``batch_size`` x ``input_shape`` in
    [0, 1], seed 0), dense and as :class:`BlockSparseLinear` (median of ``repeats`` after 3 warm-up calls,
    alternating, under ``torch.inference_mode``, with ``num_threads`` intra-op threads if given, else the
    current setting); it is swapped when ``dense_ms / block_ms >= min_speedup``. Conv2d layers stay dense:
    their GEMM would need an explicit im2col first, which torch's convolution already fuses, so a
    block-sparse GEMM would not pay. The original model is not modified.

    Returns:
        The copy and one dict per Linear: ``layer`` (index in the Sequential), ``shape`` ([out, in]),
        ``dense_ms``, ``block_ms``, ``speedup``, ``used_block_format``, ``nonzero_blocks``, ``blocks_total``
        and ``backend``.
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"need batch_size >= 1 and repeats >= 1, got {batch_size} and {repeats}")
    block = _check_block(block)
    result = copy.deepcopy(model).eval()
    previous_threads = torch.get_num_threads()
    decisions = []
    try:
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        x = torch.rand((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            inputs = _linear_inputs(result, x)
        for index, layer_input in sorted(inputs.items()):
            candidate, decision = _decide(index, result[index], layer_input, block, repeats, min_speedup)
            if decision["used_block_format"]:
                result[index] = candidate
            decisions.append(decision)
    finally:
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)
    return result, decisions


__all__ = ["BlockSparseLinear", "choose_block_format", "gemm_view", "layer_regularity", "regularity_metrics"]
