"""benchmarks/step_anatomy.py: its replayed matrix products are the ones a real training step runs."""

from __future__ import annotations

import collections

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bayescomp import bayesify
from bayescomp.models import create_model
from bayescomp.objective import collect_kl
from benchmarks.step_anatomy import BATCH, _products


def _product_shapes(fn) -> collections.Counter:
    """(op, input shapes) of every matrix product ``fn`` runs, read by the profiler."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    shapes = collections.Counter()
    for event in prof.events():
        if event.name in ("aten::mm", "aten::addmm"):
            dims = sorted(tuple(s) for s in event.input_shapes if len(s) == 2)
            shapes[tuple(dims)] += 1
    return shapes


def test_the_replayed_products_match_a_real_step_of_each_network():
    torch.manual_seed(0)
    plain = create_model("lenet300", 10, (1, 28, 28), [0.13], [0.31])
    gnj = bayesify(plain, "gnj", {"z_sampling": "example"}).train()
    x, y = torch.rand(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))

    def step(model, kl: bool) -> None:
        loss = F.cross_entropy(model(x), y)
        if kl:
            loss = loss + collect_kl(model) / 60000
        loss.backward()

    real_plain = _product_shapes(lambda: step(plain, False))
    real_gnj = _product_shapes(lambda: step(gnj, True))
    assert sum(real_plain.values()) == 8 and sum(real_gnj.values()) == 18
    assert _product_shapes(_products(torch.float32, [(1, 0), (1, 1), (1, 1)])) == real_plain
    assert _product_shapes(_products(torch.float32, [(2, 2), (2, 2), (2, 2)])) == real_gnj
    # the default z_sampling="auto" shares z in the first layer, whose input has no gradient: two products fewer
    real_auto = _product_shapes(lambda: step(bayesify(plain, "gnj").train(), True))
    assert _product_shapes(_products(torch.float32, [(2, 0), (2, 2), (2, 2)])) == real_auto
