"""The driver that shares an accelerator between blind reruns: its stopping rule and its progress reading."""

from __future__ import annotations

import time

import pytest

import torch
from torch import nn

from bayescomp.evaluation import placed
from benchmarks.device_rows import Job, jobs_that_fit, parse_job


def _job(remaining: int, rate: float | None, epochs: int = 200) -> Job:
    job = Job("lenet5", "gnj", epochs, 0)
    done = epochs - remaining
    if rate is not None:
        job.first_epoch, job.last_epoch = (0.0, 0), (done / rate, done)
    return job


def test_all_jobs_kept_when_each_finishes_at_its_own_rate():
    jobs = [_job(100, 1.0), _job(100, 1.0), _job(100, 1.0)]
    assert jobs_that_fit(jobs, 150.0) == 3


def test_lowest_priority_jobs_stopped_when_the_shared_rate_cannot_finish_them():
    # each would need 100 s at its own rate (> 90 s left); the summed rate, 3 epochs/s, finishes 270 epochs in
    # 90 s: the first two jobs (200 epochs), not the third (300)
    jobs = [_job(100, 1.0), _job(100, 1.0), _job(100, 1.0)]
    assert jobs_that_fit(jobs, 90.0) == 2
    assert jobs_that_fit(jobs, 20.0) == 0


def test_no_job_stopped_before_every_rate_is_known():
    assert jobs_that_fit([_job(100, 1.0), _job(200, None)], 1.0) == 2


def test_progress_is_read_from_the_bayesian_epoch_lines_only(tmp_path):
    job = parse_job("lenet5 ghs 200 1 --tolerances 1.0")
    assert job.name == "lenet5_ghs_200_seed1" and job.extra == ["--tolerances", "1.0"]
    job.log_path = tmp_path / "log"
    job.log_path.write_text("epoch   1/10  loss 0.3  (1.0s)\nepoch   3/200  loss 1.0  (5.0s)\nepoch  20/20  loss 0.1  (2.0s)\n")
    job.read_progress()
    assert job.last_epoch[1] == 3 and job.remaining_epochs() == 197
    time.sleep(0.01)
    job.log_path.write_text(job.log_path.read_text() + "epoch   5/200  loss 0.9  (6.0s)\n")
    job.read_progress()
    assert job.rate() is not None and job.rate() > 0 and job.remaining_epochs() == 195
    assert job.epoch_seconds == [5.0, 6.0]


class _Recording(nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.moves: list[str] = []

    def to(self, *args, **kwargs):  # records instead of moving: this machine may have one device only
        self.moves.append(str(args[0]))
        return self


def test_placed_moves_there_and_back_even_when_the_block_fails():
    model = _Recording()
    try:
        with placed(model, "meta") as inside:
            assert inside is model
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert model.moves == ["meta", "cpu"]
    with placed(model, None), placed(model, "cpu"):
        pass
    assert model.moves == ["meta", "cpu"]  # no device, or the model's own: nothing moves


def test_placed_keeps_the_modules_parameters_and_hooks():
    model = nn.Sequential(nn.Linear(3, 2))
    weight = model[0].weight
    seen = []
    model[0].register_forward_pre_hook(lambda module, args: seen.append(1))
    with placed(model, torch.device("cpu")):
        model(torch.ones(1, 3))
    assert model[0].weight is weight and seen == [1]


def test_a_cifar_job_runs_cifar_runs_with_its_own_run_directory_and_arguments():
    job = parse_job("resnet20 gnj 30 0 --pretrained --finetune-epochs 40")
    cmd = job.command("cuda", ["--cuda-graphs"])
    assert cmd[1:3] == ["-m", "benchmarks.cifar_runs"]
    assert cmd[cmd.index("--run-dir") + 1] == str(job.run_dir) and cmd[cmd.index("--epochs") + 1] == "30"
    assert cmd[-4:] == ["--cuda-graphs", "--pretrained", "--finetune-epochs", "40"]
    with pytest.raises(SystemExit, match="seed 0"):
        parse_job("resnet20 gnj 30 1").command("cuda")
