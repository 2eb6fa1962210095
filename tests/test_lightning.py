"""The PyTorch Lightning callback makes the hook calls a training loop of its own must make (issue 19, item 2).

Same setting as tests/test_own_loop.py (LeNet-300-100, 2,000 real MNIST training images, 4 Bayesian epochs at batch
100, Adam 1e-3), trained by a ``lightning.Trainer`` whose module adds ``kl_loss / N`` to its loss.
"""

from __future__ import annotations

import math
import warnings

import lightning
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import bayescomp
from bayescomp import TrainConfig, bayesify, compress_posterior, evaluate, fit
from bayescomp.lightning_callback import BayesCompCallback

EPOCHS, BATCH, LR = 4, 100, 1e-3


class Module(lightning.LightningModule):
    def __init__(self, net: torch.nn.Module, n_train: int) -> None:
        super().__init__()
        self.net, self.n_train = net, n_train

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.net(images), labels) + bayescomp.kl_loss(self.net) / self.n_train

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=LR)


@pytest.fixture(scope="module")
def setup(lenet300_pretrained_small):
    data, dense = lenet300_pretrained_small
    loader = DataLoader(TensorDataset(data.train.images.float() / 255, data.train.labels), batch_size=BATCH,
                        shuffle=True, generator=torch.Generator().manual_seed(1))
    return data, dense, loader


def train(model: torch.nn.Module, loader: DataLoader, n_train: int, callbacks: list, accumulate: int = 1) -> None:
    torch.manual_seed(0)
    trainer = lightning.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                callbacks=callbacks, accumulate_grad_batches=accumulate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging
        trainer.fit(Module(model, n_train), loader)


def _compress(model, data) -> tuple[int, float]:
    result = compress_posterior(model, data.val)
    return result.weights_nonzero, evaluate(result.quantized_model, data.val)["error_pct"]


def test_callback_runs_after_step_once_per_optimizer_step(setup):
    data, dense, loader = setup
    model = bayesify(dense, "gnj")
    callback = BayesCompCallback()
    train(model, loader, len(data.train), [callback], accumulate=2)
    assert callback.steps_seen == EPOCHS * math.ceil(len(loader) / 2)
    layers = [m for m in model.modules() if hasattr(m, "weight_log_sigma2")]
    bound = math.log(layers[0].config.clip_var)
    assert all(float(m.weight_log_sigma2.detach().max()) <= bound + 1e-6 for m in layers), "variances clipped"


def test_gnj_through_lightning_compresses_like_fit(setup):
    data, dense, loader = setup
    with_fit = bayesify(dense, "gnj")
    fit(with_fit, data, TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=0), progress=False,
        log=lambda *_: None)
    mine = bayesify(dense, "gnj")
    train(mine, loader, len(data.train), [BayesCompCallback()])
    (kept_fit, err_fit), (kept_own, err_own) = _compress(with_fit, data), _compress(mine, data)
    print(f"fit kept {kept_fit} val {err_fit:.2f} %; lightning kept {kept_own} val {err_own:.2f} %")
    dense_weights = sum(m.weight.numel() for m in dense.modules() if isinstance(m, torch.nn.Linear))
    assert kept_own < 0.8 * dense_weights, "the Lightning run prunes"
    # fit alone, from three RNG states, kept 78,920 / 87,652 / 105,248 weights (1.33x) on this schedule: the search
    # steps between discrete pruning levels decided by a few validation examples; Lightning kept 112,512-124,070
    assert max(kept_fit, kept_own) / min(kept_fit, kept_own) < 1.6
    p = err_fit / 100
    assert abs(err_own - err_fit) <= 3 * 100 * math.sqrt(2 * p * (1 - p) / len(data.val))


def test_turbo_needs_the_callback(setup):
    data, dense, loader = setup
    with_callback = bayesify(dense, "turbo", {"update_every": 20})
    train(with_callback, loader, len(data.train), [BayesCompCallback()])
    without = bayesify(dense, "turbo", {"update_every": 20})
    train(without, loader, len(data.train), [])
    kept_with, _ = _compress(with_callback, data)
    with pytest.warns(UserWarning, match="never updated"):
        kept_without, _ = _compress(without, data)
    dense_weights = sum(m.weight.numel() for m in dense.modules() if isinstance(m, torch.nn.Linear))
    print(f"turbo with callback kept {kept_with}, without {kept_without} of {dense_weights}")
    assert kept_with < 0.8 * dense_weights <= kept_without
