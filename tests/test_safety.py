"""Safe by construction (issue 15): loading never runs code, corrupt checkpoints are never used silently."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from bayescomp.checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint
from bayescomp.cli import main


class _Payload:
    """Pickles into a call that creates ``marker``: what a hostile file would do when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _hostile_checkpoint(path: Path, marker: Path, with_header: bool) -> None:
    payload = _torch_bytes({"format": "bayescomp-checkpoint", "version": 2, "epoch": 1, "evil": _Payload(marker)})
    if with_header:  # an attacker can compute the checksum too: it guards against corruption, not malice
        payload = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    path.write_bytes(payload)


@pytest.mark.parametrize("with_header", [True, False])
def test_crafted_checkpoint_is_refused_without_running_it(tmp_path, with_header):
    marker, path = tmp_path / "marker", tmp_path / "bayes.ckpt"
    _hostile_checkpoint(path, marker, with_header)
    with pytest.raises(CheckpointError, match=r"bayes\.ckpt.*refused"):
        load_checkpoint(path)
    assert not marker.exists()
    # sanity check of the test itself: the unrestricted loader would have run the payload
    raw = path.read_bytes()
    torch.load(io.BytesIO(raw[raw.index(b"\n") + 1:] if with_header else raw), weights_only=False)
    assert marker.exists()


def test_plain_pickle_checkpoint_is_refused(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "bayes.ckpt"
    path.write_bytes(pickle.dumps({"format": "bayescomp-checkpoint", "epoch": 1, "x": _Payload(marker)}))
    with pytest.raises(CheckpointError, match="bayes.ckpt"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_round_trip_keeps_rng_states_and_names_the_file(tmp_path):
    import random

    import numpy as np

    path = tmp_path / "a.ckpt"
    state = {"epoch": 3, "history": [{"loss": np.float64(0.5)}], "numpy_rng": np.random.get_state(),
             "python_rng": random.getstate(), "model": {"w": torch.arange(4.0)}}
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["checkpoint_file"] == str(path)
    assert loaded["epoch"] == 3 and loaded["history"] == [{"loss": 0.5}]
    np_state = loaded["numpy_rng"]
    assert np_state[0] == "MT19937" and np_state[1].dtype == np.uint32
    assert np.array_equal(np_state[1], state["numpy_rng"][1]) and np_state[2:] == state["numpy_rng"][2:]
    np.random.set_state(np_state)  # accepted by numpy
    assert loaded["python_rng"] == state["python_rng"]
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))


def test_flipped_bytes_in_the_middle_fall_back_to_previous_or_fail(tmp_path):
    path = tmp_path / "bayes.ckpt"
    save_checkpoint({"epoch": 1, "model": {"w": torch.zeros(4096)}}, path)
    save_checkpoint({"epoch": 2, "model": {"w": torch.ones(4096)}}, path)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(64)  # zeroed block inside the tensor data: same length, still a valid zip
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checksum.*previous checkpoint"):
        state = load_checkpoint(path)
    assert state["epoch"] == 1 and state["checkpoint_file"].endswith("bayes.ckpt.prev")
    assert (tmp_path / "bayes.ckpt.corrupt").exists()
    # with no good previous checkpoint: a clear error, the file is left as it was
    lone = tmp_path / "lone.ckpt"
    save_checkpoint({"epoch": 5, "model": {"w": torch.ones(4096)}}, lone)
    raw = bytearray(lone.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    lone.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"lone\.ckpt.*checksum"):
        load_checkpoint(lone)
    assert lone.read_bytes() == bytes(raw)


def test_stale_temporary_from_a_killed_write_is_removed(tmp_path):
    path = tmp_path / "bayes.ckpt"
    save_checkpoint({"epoch": 1}, path)
    stale = tmp_path / ".bayes.ckpt.abc123.tmp"
    stale.write_bytes(b"half written")
    other = tmp_path / ".other.ckpt.x.tmp"
    other.write_bytes(b"not ours")
    assert load_checkpoint(path)["epoch"] == 1
    assert not stale.exists() and other.exists()


def test_crafted_hypernetwork_file_is_refused_by_the_cli(tmp_path, capsys):
    marker, path = tmp_path / "marker", tmp_path / "hyper.pt"
    path.write_bytes(_torch_bytes({"format": "bayescomp-hyper-1", "metadata": _Payload(marker)}))
    code = main(["hyper", "generate", str(path), "--classes", "0,1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and "refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_hypernetwork_file_with_missing_keys_is_named(tmp_path):
    from bayescomp.hyper import load_hypernetwork

    path = tmp_path / "hyper.pt"
    path.write_bytes(_torch_bytes({"format": "bayescomp-hyper-1", "config": {}}))
    with pytest.raises(CheckpointError, match=r"hyper\.pt lacks the keys \['state_dict', 'num_classes'"):
        load_hypernetwork(path)


@pytest.mark.parametrize("name", ["hyper_lenet5_mnist", "hyper_lenet5_fashion-mnist"])
def test_committed_hypernetwork_files_still_load(name):
    from bayescomp.hyper import load_hypernetwork

    path = Path(__file__).parents[1] / "benchmarks" / "results" / name / "hyper.pt"
    model = load_hypernetwork(path)
    assert model.metadata["model"] == "lenet5"


def test_crafted_dense_cache_is_not_run_and_is_replaced(tmp_path, monkeypatch):
    from bayescomp import pipeline

    monkeypatch.setenv("BAYESCOMP_CACHE", str(tmp_path / "cache"))
    config = pipeline.RunConfig(model="lenet300", data="mnist", val_size=200, train_subset=400,
                                dense=pipeline.TrainConfig(epochs=1, batch_size=200))
    data = pipeline.load_data(config)
    logs: list[str] = []
    pipeline.dense_model(config, data, log=logs.append, progress=False)
    (cached,) = (tmp_path / "cache" / "dense").glob("*.pt")
    marker = tmp_path / "marker"
    cached.write_bytes(_torch_bytes({"fc.weight": _Payload(marker)}))
    logs.clear()
    with pytest.warns(UserWarning, match=rf"{cached.name}.*refused"):
        pipeline.dense_model(config, data, log=logs.append, progress=False)
    assert not marker.exists()
    assert any("retraining" in line for line in logs)
    torch.load(cached, weights_only=True)  # the replacement is a plain state dict again


SMALL = ["--train-subset", "600", "--val-size", "200", "--test-subset", "200", "--dense-epochs", "1",
         "--epochs", "1", "--batch-size", "100", "--no-progress", "--no-latency", "--no-plots"]


@pytest.mark.parametrize("args,option", [
    (["--epochs", "-1"], "--epochs"),
    (["--dense-epochs", "-2"], "--dense-epochs"),
    (["--finetune-epochs", "-1"], "--finetune-epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--tolerance", "-0.5"], "--tolerance"),
    (["--tolerance", "nan"], "--tolerance"),
    (["--val-size", "0"], "--val-size"),
    (["--kl-warmup", "-1"], "--kl-warmup"),
    (["--train-subset", "0"], "--train-subset"),
    (["--nproc", "0"], "--nproc"),
    (["--thresholds", "1,2"], "--thresholds"),  # lenet300 has 3 prunable layers
    (["--thresholds", "nan"], "--thresholds"),
    (["--clip-var", "-1"], "--clip-var"),
    (["--prior-option", "clip_var=abc"], "clip_var"),
    (["--prior-option", "clip_var=-1"], "clip_var"),
    (["--prior-option", "z_sampling=3"], "z_sampling"),
    (["--method", "turbo", "--prior-option", "p01=1.5"], "p01"),
    (["--method", "magnitude", "--sparsity", "-0.1"], "--sparsity"),
])
def test_cli_bad_values_exit_2_naming_the_option_before_any_training(args, option, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("BAYESCOMP_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "r"
    code = main(["run", "--model", "lenet300", "--run-dir", str(run_dir), *SMALL, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "dense").exists()  # nothing trained
    assert not list(run_dir.glob("*.ckpt")) if run_dir.exists() else True


@pytest.mark.parametrize("args,option", [
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--option", "hidden=abc"], "hidden"),
    (["train", "--option", "hidden=-3"], "hidden"),
    (["generate", "some/hyper.pt", "--classes", "0,1", "--budget", "0", "--out", "x"], "--budget"),
    (["generate", "some/hyper.pt", "--classes", "0,1", "--budget", "1.5", "--out", "x"], "--budget"),
])
def test_cli_hyper_bad_values_exit_2(args, option, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["hyper", *args, *(["--run-dir", str(tmp_path / "h")] if args[0] == "train" else [])])
    err = capsys.readouterr().err
    assert code == 2 and option in err and "Traceback" not in err
    assert not (tmp_path / "h").exists()


def test_report_json_with_missing_keys_is_named(tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps({"model": "lenet300"}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "report.json" in err and "test_error_pct" in err


def test_val_size_zero_is_refused_by_the_api():
    from bayescomp.pipeline import RunConfig

    with pytest.raises(ValueError, match="--val-size must be an integer >= 1"):
        RunConfig(val_size=0)


def test_report_warns_next_to_misleading_headlines():
    from bayescomp.report import report_warnings

    good = {"dense_test_error_pct": 1.8, "test_error_pct_bayes": 1.9, "test_error_pct": 2.0, "n_val": 5000,
            "weights_kept": 9000, "weights_dense": 266200, "kept_architecture": "600-100-50-10"}
    assert report_warnings(good) == []
    chance = {**good, "test_error_pct": 89.7}
    assert any("compressed model is at or near chance" in w for w in report_warnings(chance))
    tiny = {**good, "n_val": 20}
    assert any("only 20 examples" in w for w in report_warnings(tiny))
    empty = {**good, "kept_architecture": "1-1-1-10", "weights_kept": 12}
    assert any("kept almost nothing" in w for w in report_warnings(empty))
