"""Shared fixtures: a private cache directory and small real MNIST subsets."""

from __future__ import annotations

import os
import tempfile

import pytest
import toy_method  # noqa: F401  (registers the toy method "toy-rownorm": one file + this line)
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Never touch the user's ~/.cache: checksum verdicts and dense models go to a per-session folder. Set at import
# time so that module- and session-scoped fixtures see it too.
SESSION_CACHE = tempfile.mkdtemp(prefix="bayescomp-test-cache-")
os.environ["BAYESCOMP_CACHE"] = SESSION_CACHE


@pytest.fixture(autouse=True)
def private_cache(monkeypatch):
    monkeypatch.setenv("BAYESCOMP_CACHE", SESSION_CACHE)
    return SESSION_CACHE


@pytest.fixture(scope="session")
def mnist_small():
    """Real MNIST, 2000 training / 500 validation / 1000 test examples."""
    from bayescomp.data import load_dataset

    return load_dataset("mnist", val_size=500, seed=0, train_subset=2000, test_subset=1000)


@pytest.fixture(scope="session")
def lenet300_pretrained_small():
    """(data, dense): LeNet-300-100 trained 3 epochs (batch 100, Adam 1e-3) on 2,000 real MNIST images, 1,000
    validation; the starting point of the own-loop and Lightning tests, which compare training loops on it."""
    from bayescomp import TrainConfig, create_model, fit, load_dataset

    torch.manual_seed(0)
    data = load_dataset("mnist", val_size=1000, seed=0, train_subset=2000, test_subset=100)
    dense = create_model("lenet300")
    fit(dense, data, TrainConfig(epochs=3, batch_size=100, lr=1e-3, seed=0), progress=False, log=lambda *_: None)
    return data, dense

