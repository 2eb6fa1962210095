"""Data-parallel training: 2 gloo ranks on loopback against one process (real MNIST, CPU).

The ranks are spawned processes; each writes what it measured to a file that the test reads. Deterministic
(posterior-mean) layers make the 2-rank gradient comparable to the single-process one up to float rounding.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from bayescomp import distributed
from bayescomp.bayesify import bayesify
from bayescomp.compress.digest import mask_digest
from bayescomp.data import load_dataset
from bayescomp.models import create_model
from bayescomp.objective import variational_loss
from bayescomp.priors.base import set_deterministic
from bayescomp.train import TrainConfig, fit, seed_everything, shard_loss

WORLD = 2
#: odd global batch (uneven 37/36 split) whose last batch of 512 examples holds 1 example (rank 1 gets none)
BATCH = 73
CONFIG = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-3, seed=0, lr_scales={"z_log_sigma2": 10.0})


def _data():
    return load_dataset("mnist", val_size=500, seed=0, train_subset=512, test_subset=200)


def _model(data, prior: str = "gnj") -> nn.Module:
    seed_everything(0)
    if prior == "turbo":  # a small MLP keeps the Turbo-VBI updates cheap; updates run every 2 steps
        dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
        return bayesify(dense, "turbo", {"update_every": 2})
    return bayesify(create_model("lenet300", 10, (1, 28, 28), data.mean, data.std), prior)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _digest(model: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str, case: str) -> None:
    """A spawned rank, run the way the CLI runs a torchrun worker (:func:`distributed.run_worker`): the group is
    left on every path and the process exits with ``os._exit``. A rank that returned normally could die at
    interpreter exit with SIGABRT ("terminate called without an active exception", gloo threads still being
    destroyed), which failed CI twice after complete, correct runs."""
    distributed.run_worker(lambda _argv: _work(rank, port, out, case))


def _work(rank: int, port: int, out: str, case: str) -> int:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert distributed.init_from_env() and distributed.world_size() == WORLD and distributed.rank() == rank
    data = _data()
    result = {}
    if case == "exact":
        # (1) one step's gradient: DDP over 2 slices == one process on the whole global batch, KL counted once
        model = _model(data)
        set_deterministic(model, True)
        reference, doubled = copy.deepcopy(model), copy.deepcopy(model)
        images, labels = next(data.train.batches(BATCH))
        loss, _, _ = variational_loss(reference(images), labels, reference, len(data.train))
        loss.backward()
        _, nll, kl = variational_loss(doubled(images), labels, doubled, len(data.train))
        (nll + WORLD * kl / len(data.train)).backward()  # what "KL once per rank" would give
        net = torch.nn.parallel.DistributedDataParallel(model)
        local, *_ = shard_loss(net, model, variational_loss, images, labels, len(data.train), 1.0)
        local.backward()
        result["grad_gap"] = _max_gap(_grads(model), _grads(reference))
        result["kl_twice_gap"] = _max_gap(_grads(doubled), _grads(reference))
        # (2) a whole epoch (8 steps, the last one a single example) with Adam
        model = _model(data)
        set_deterministic(model, True)
        # float32: the ranks' bf16 roundings of their slices differ from one rounding of the whole batch
        history = fit(model, data, CONFIG, progress=False, log=lambda *_: None, precision="fp32")
        result["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        result["record"] = history.epochs[-1]
    else:  # "sync": a short stochastic run; every rank must end with the same weights, buffers and masks
        for prior in ("gnj", "turbo"):
            model = _model(data, prior)
            fit(model, data, TrainConfig(epochs=1, batch_size=64, lr=3e-3, seed=0), progress=False,
                log=lambda *_: None)
            thresholds = 0.0 if prior == "gnj" else 3.0
            result[prior] = {"state": _digest(model),
                             "masks": mask_digest(model, thresholds, data.val.example()),
                             "same_state": distributed.all_equal(_digest(model))}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    return 0


def _spawn(tmp_path: Path, case: str, monkeypatch) -> list[dict]:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only: no dependence on the host name's address
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), case), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_two_ranks_give_the_single_process_gradient_and_training(tmp_path, monkeypatch):
    ranks = _spawn(tmp_path, "exact", monkeypatch)
    for result in ranks:
        assert result["grad_gap"] < 1e-6
        # the check can fail: counting the KL once per rank moves the gradient far beyond the tolerance
        assert result["kl_twice_gap"] > 1e-4
    data = _data()
    model = _model(data)
    set_deterministic(model, True)
    single = fit(model, data, CONFIG, progress=False, log=lambda *_: None, precision="fp32").epochs[-1]
    for result in ranks:
        gap = max(float((p.detach() - result["params"][n]).abs().max()) for n, p in model.named_parameters())
        assert gap < 1e-5, gap
        for key in ("loss", "nll", "kl"):  # logged values are the global-batch ones
            assert result["record"][key] == pytest.approx(single[key], rel=1e-5)


def test_two_ranks_stay_in_sync_and_agree_on_masks(tmp_path, monkeypatch):
    ranks = _spawn(tmp_path, "sync", monkeypatch)
    for prior in ("gnj", "turbo"):
        assert ranks[0][prior]["same_state"] and ranks[1][prior]["same_state"]
        assert ranks[0][prior]["state"] == ranks[1][prior]["state"]
        assert ranks[0][prior]["masks"] == ranks[1][prior]["masks"]


def test_helpers_are_single_process_no_ops_without_torchrun():
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main() and distributed.all_equal("x") and distributed.shard(10) == (0, 10)
    assert distributed.broadcast(3) == 3
    cmd = distributed.torchrun_command(2, ["run", "--model", "lenet300"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert cmd[-4:] == ["bayescomp.cli", "run", "--model", "lenet300"]


def test_cli_run_with_two_processes(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "BAYESCOMP_CACHE": str(cache), "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("OMP_NUM_THREADS", None)
    args = ["run", "--nproc", "2", "--model", "lenet300", "--data", "mnist", "--train-subset", "512", "--val-size",
            "200", "--test-subset", "200", "--dense-epochs", "1", "--epochs", "1", "--no-latency", "--no-plots",
            "--no-progress", "--run-dir", str(run_dir)]
    out = subprocess.run([sys.executable, "-m", "bayescomp.cli", *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["ddp"]["ranks"] == 2 and report["ddp"]["same_masks"] is True
    assert report["ddp"]["backend"] == "gloo"
    assert (run_dir / "compressed.bcz").exists() and (run_dir / "bayes.ckpt").exists()
    assert out.stdout.count("bayescomp report") == 1  # only rank 0 prints


def test_shards_are_tensor_split_slices(monkeypatch):
    for world in (1, 2, 3, 4):
        for n in range(0, 11):
            for r in range(world):
                monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
                monkeypatch.setattr(distributed, "rank", lambda r=r: r)
                lo, hi = distributed.shard(n)
                assert list(range(lo, hi)) == torch.tensor_split(torch.arange(n), world)[r].tolist()


def test_crop_flip_of_a_slice_is_the_slice_of_the_global_augmentation():
    from bayescomp.train import crop_flip

    images = torch.rand(9, 3, 8, 8)
    whole = crop_flip(images, torch.Generator().manual_seed(1))
    for rows in (slice(0, 5), slice(5, 9)):
        assert torch.equal(crop_flip(images, torch.Generator().manual_seed(1), rows=rows), whole[rows])
