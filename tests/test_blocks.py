"""Tests of block regularity metrics and block-sparse execution (bayescomp.compress.blocks)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from bayescomp.compress.blocks import (
    BlockSparseLinear,
    choose_block_format,
    gemm_view,
    layer_regularity,
    regularity_metrics,
)
from bayescomp.measure import count_nonzero_weights, count_weights

COUNTS = ("nonzero_weights", "nonzero_blocks", "dense_blocks", "weights_in_dense_blocks", "empty_rows",
          "empty_columns", "blocks_total", "row_runs")


def block_sparse_weight(out: int, inp: int, block: tuple[int, int], keep: float, seed: int) -> torch.Tensor:
    """A random weight whose non-zeros fill a random ``keep`` share of the ``block`` tiles."""
    generator = torch.Generator().manual_seed(seed)
    bh, bw = block
    tiles = torch.rand(-(-out // bh), -(-inp // bw), generator=generator) < keep
    mask = tiles.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:out, :inp]
    return torch.randn(out, inp, generator=generator) * mask


def reference_regularity(matrix: torch.Tensor, block: tuple[int, int]) -> dict[str, float | int]:
    """Slow loop-based reference of :func:`layer_regularity` on a 2-D matrix."""
    nz = [[float(v) != 0.0 for v in row] for row in matrix.tolist()]
    rows, cols = len(nz), len(nz[0])
    bh, bw = block
    nnz_blocks = dense_blocks = in_dense = tiles = 0
    for r0 in range(0, rows, bh):
        for c0 in range(0, cols, bw):
            tiles += 1
            entries = [nz[r][c] for r in range(r0, min(r0 + bh, rows)) for c in range(c0, min(c0 + bw, cols))]
            nnz_blocks += any(entries)
            if all(entries):
                dense_blocks += 1
                in_dense += len(entries)
    runs = []
    for row in nz:
        length = 0
        for value in [*row, False]:
            if value:
                length += 1
            elif length:
                runs.append(length)
                length = 0
    nnz = sum(map(sum, nz))
    return {
        "nonzero_weights": nnz, "nonzero_blocks": nnz_blocks, "dense_blocks": dense_blocks,
        "weights_in_dense_blocks": in_dense, "blocks_total": tiles, "row_runs": len(runs),
        "empty_rows": sum(not any(row) for row in nz),
        "empty_columns": sum(not any(nz[r][c] for r in range(rows)) for c in range(cols)),
        "dense_block_share": in_dense / nnz if nnz else 0.0,
        "blocks_per_nonzero": nnz_blocks / nnz if nnz else 0.0,
        "mean_row_run": sum(runs) / len(runs) if runs else 0.0,
        "shape": [rows, cols],
    }


def test_dense_8x8_is_four_dense_blocks():
    result = layer_regularity(torch.ones(8, 8))
    assert result["nonzero_weights"] == 64
    assert result["nonzero_blocks"] == result["dense_blocks"] == 4
    assert result["weights_in_dense_blocks"] == 64
    assert result["dense_block_share"] == 1.0
    assert result["blocks_per_nonzero"] == 4 / 64
    assert result["mean_row_run"] == 8.0
    assert result["empty_rows"] == result["empty_columns"] == 0
    assert result["shape"] == [8, 8]


def test_checkerboard_has_no_dense_block():
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float()
    result = layer_regularity(board)
    assert result["nonzero_weights"] == 32
    assert result["nonzero_blocks"] == 4
    assert result["dense_blocks"] == 0
    assert result["dense_block_share"] == 0.0
    assert result["mean_row_run"] == 1.0
    assert result["empty_rows"] == result["empty_columns"] == 0


def test_partial_edge_tiles_5x6():
    # tiles (4x4): [0:4, 0:4], [0:4, 4:6], [4:5, 0:4], [4:5, 4:6]
    w = torch.zeros(5, 6)
    w[0:4, 4:6] = 1.0  # the whole 4x2 right tile: dense
    w[4, 4:6] = 2.0  # the whole 1x2 corner tile: dense
    w[4, 0:3] = 3.0  # 3 of the 4 entries of the 1x4 bottom tile: not dense
    w[1, 1] = -0.0  # negative zero is zero
    result = layer_regularity(w)
    assert result["nonzero_weights"] == 8 + 2 + 3
    assert result["blocks_total"] == 4
    assert result["nonzero_blocks"] == 3
    assert result["dense_blocks"] == 2
    assert result["weights_in_dense_blocks"] == 10
    assert result["dense_block_share"] == pytest.approx(10 / 13)
    assert result["blocks_per_nonzero"] == pytest.approx(3 / 13)
    # runs: rows 0-3 one run of 2 each; row 4 runs of 3 and 2
    assert result["row_runs"] == 6
    assert result["mean_row_run"] == pytest.approx(13 / 6)
    assert result["empty_rows"] == 0
    assert result["empty_columns"] == 1  # column 3
    assert result["shape"] == [5, 6]


def test_conv_weight_uses_its_gemm_view():
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(2, 3, 2, 2, generator=generator) * (torch.rand(2, 3, 2, 2, generator=generator) < 0.6)
    w[0, 1] = 1.0  # one whole kernel slice: a run of 4 GEMM columns
    view = gemm_view(w)
    assert view.shape == (2, 12)
    assert torch.equal(view[0, 4:8], torch.ones(4))
    assert layer_regularity(w, (2, 4)) == layer_regularity(view, (2, 4))
    assert layer_regularity(w, (2, 4)) == reference_regularity(view, (2, 4))
    assert layer_regularity(w, (2, 4))["dense_blocks"] >= 1


def test_all_zero_matrix_has_zero_shares():
    result = layer_regularity(torch.zeros(5, 7))
    assert result["nonzero_weights"] == result["nonzero_blocks"] == result["dense_blocks"] == 0
    assert result["dense_block_share"] == result["blocks_per_nonzero"] == result["mean_row_run"] == 0.0
    assert result["empty_rows"] == 5 and result["empty_columns"] == 7
    totals = regularity_metrics([torch.zeros(3, 3)])
    assert totals["dense_block_share"] == 0.0 and totals["mean_row_run"] == 0.0


@pytest.mark.parametrize("block", [(4, 4), (1, 8), (2, 2)])
def test_metrics_match_loop_reference_and_sum_over_layers(block):
    torch.manual_seed(0)
    weights = [
        block_sparse_weight(13, 21, block, 0.3, seed=1) * (torch.rand(13, 21) < 0.9),
        torch.randn(16, 16) * (torch.rand(16, 16) < 0.2),
        block_sparse_weight(9, 5, (3, 2), 0.5, seed=2),
        torch.randn(4, 3, 3, 3) * (torch.rand(4, 3, 3, 3) < 0.5),
    ]
    metrics = regularity_metrics(weights, block)
    json.dumps(metrics)
    assert metrics["block"] == list(block)
    for weight, layer in zip(weights, metrics["layers"], strict=True):
        expected = reference_regularity(gemm_view(weight), block)
        for key, value in expected.items():
            assert layer[key] == pytest.approx(value), key
    for key in COUNTS:
        assert metrics[key] == sum(layer[key] for layer in metrics["layers"])
    nnz = metrics["nonzero_weights"]
    assert metrics["dense_block_share"] == pytest.approx(metrics["weights_in_dense_blocks"] / nnz)
    assert metrics["blocks_per_nonzero"] == pytest.approx(metrics["nonzero_blocks"] / nnz)
    runs = sum(layer["row_runs"] for layer in metrics["layers"])
    weighted = sum(layer["row_runs"] * layer["mean_row_run"] for layer in metrics["layers"]) / runs
    assert metrics["mean_row_run"] == pytest.approx(weighted)
    assert metrics["shape"] == [layer["shape"] for layer in metrics["layers"]]


def test_layer_regularity_is_fast_on_500x800():
    weight = block_sparse_weight(500, 800, (4, 4), 0.05, seed=0)
    result = layer_regularity(weight)
    assert result["dense_blocks"] == result["nonzero_blocks"]
    assert result["dense_block_share"] == 1.0


@pytest.mark.parametrize("shape", [(16, 32), (13, 30), (1, 5)])
@pytest.mark.parametrize("block", [(4, 4), (2, 8)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 64])
def test_block_sparse_linear_matches_dense(shape, block, bias, batch):
    out, inp = shape
    layer = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(block_sparse_weight(out, inp, block, 0.4, seed=3))
    sparse = BlockSparseLinear.from_linear(layer, block)
    assert sparse.backend == ("bsr" if block[0] == block[1] else "gather")
    assert (sparse.in_features, sparse.out_features) == (inp, out)
    assert torch.equal(sparse.weight, layer.weight.detach())
    x = torch.randn(batch, inp, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = layer(x)
    assert sparse(x).shape == expected.shape
    torch.testing.assert_close(sparse(x), expected, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["bsr", "gather"])
def test_block_sparse_linear_edge_cases(backend):
    layer = nn.Linear(10, 7)
    with torch.no_grad():
        layer.weight.zero_()
    sparse = BlockSparseLinear.from_linear(layer, (4, 4), backend=backend)
    assert sparse.values.shape[0] == 0
    x = torch.randn(5, 10)
    torch.testing.assert_close(sparse(x), layer(x).detach(), atol=1e-5, rtol=0)
    # leading batch dims, deep copies and the measure helpers' duck typing
    layer = nn.Linear(10, 7)
    with torch.no_grad():
        layer.weight.copy_(block_sparse_weight(7, 10, (4, 4), 0.5, seed=5))
    sparse = copy.deepcopy(BlockSparseLinear.from_linear(layer, (4, 4), backend=backend))
    x = torch.randn(2, 3, 10)
    torch.testing.assert_close(sparse(x), layer(x).detach(), atol=1e-5, rtol=1e-5)
    assert count_weights(sparse) == 70
    assert count_nonzero_weights(sparse) == int(torch.count_nonzero(layer.weight))


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 30), nn.ReLU(), nn.Linear(30, 10))
    with torch.no_grad():
        model[4].weight.copy_(block_sparse_weight(30, 100, (4, 4), 0.2, seed=6))
        model[6].weight.copy_(block_sparse_weight(10, 30, (4, 4), 0.5, seed=7))
    return model.train()


@pytest.mark.parametrize("min_speedup", [0.0, math.inf, 1.1])
def test_choose_block_format(min_speedup):
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    chosen, decisions = choose_block_format(model, (1, 12, 12), batch_size=8, min_speedup=min_speedup,
                                            repeats=3)
    assert model.training and not chosen.training
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert isinstance(model[4], nn.Linear) and isinstance(model[6], nn.Linear)
    assert [d["layer"] for d in decisions] == [4, 6]
    keys = {"layer", "shape", "dense_ms", "block_ms", "speedup", "used_block_format", "nonzero_blocks",
            "blocks_total"}
    assert all(keys <= set(d) for d in decisions)
    assert decisions[0]["shape"] == [30, 100] and decisions[0]["blocks_total"] == 8 * 25
    json.dumps(decisions)
    swapped = [isinstance(chosen[d["layer"]], BlockSparseLinear) for d in decisions]
    assert swapped == [d["used_block_format"] for d in decisions]
    if min_speedup == 0.0:
        assert all(swapped)
    if min_speedup == math.inf:
        assert not any(swapped)
    assert isinstance(chosen[0], nn.Conv2d)
    x = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        torch.testing.assert_close(chosen(x), model(x), atol=1e-5, rtol=1e-5)
    assert count_nonzero_weights(chosen) == count_nonzero_weights(model)


@pytest.mark.slow
def test_print_block_timings():
    """Prints dense vs block ms for a 500 x 800 weight with 95 % of 4 x 4 blocks zero, on one thread."""
    model = nn.Sequential(nn.Linear(800, 500))
    with torch.no_grad():
        model[0].weight.copy_(block_sparse_weight(500, 800, (4, 4), 0.05, seed=0))
    for batch in (1, 256):
        _, decisions = choose_block_format(model, (800,), batch_size=batch, repeats=200, num_threads=1)
        d = decisions[0]
        print(f"batch {batch}: dense {d['dense_ms']:.4f} ms, block {d['block_ms']:.4f} ms, "
              f"speed-up {d['speedup']:.2f}, blocks {d['nonzero_blocks']}/{d['blocks_total']}")
