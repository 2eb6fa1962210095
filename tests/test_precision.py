"""Training precision: native-bf16 detection, the fp32|bf16|auto choice, and the CLI option."""

from __future__ import annotations

from pathlib import Path

import pytest

from bayescomp.cli import main as cli_main
from bayescomp.train import PRECISIONS, native_bf16, resolve_precision


def _cpuinfo_flags() -> set[str] | None:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("auto", "cuda") == "fp32" and not native_bf16("cuda")
    flags = _cpuinfo_flags()
    if flags is not None:  # independent reading of the CPU's own flags
        assert native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; use one of fp32, bf16, auto"):
        resolve_precision("fp16")
    assert PRECISIONS == ("fp32", "bf16", "auto")


def test_cli_refuses_an_unknown_precision_with_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["run", "--precision", "fp16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "fp16" in err and "Traceback" not in err


def test_channels_last_training_matches_the_default_layout_and_returns_contiguous_weights(mnist_small):
    """The NHWC layout changes only how the convolutions run. fp32, noise switched off (posterior-mean forward:
    NHWC noise tensors would be filled in another element order): the first step's outputs and gradients agree to
    float32 rounding, a short fit logs the same losses, and the model comes back in the default layout
    (compression views its weights). Weights after Adam are not compared: Adam turns rounding-level differences of
    near-zero gradients into steps of size lr."""
    import copy

    import torch

    from bayescomp import bayesify
    from bayescomp.models import create_model
    from bayescomp.priors import set_deterministic
    from bayescomp.train import TrainConfig, _to_channels_last, fit

    torch.manual_seed(0)
    model = bayesify(create_model("lenet5", 10, (1, 28, 28), [0.13], [0.31]), "gnj")
    set_deterministic(model, True)
    nhwc = copy.deepcopy(model)
    hook = _to_channels_last(nhwc)
    images = mnist_small.train.example(16)
    outputs = []
    for net in (model, nhwc):
        out = net(images)
        out.logsumexp(1).sum().backward()
        outputs.append((out.detach(), {n: p.grad for n, p in net.named_parameters()}))
    hook.remove()
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-5)
    assert any(g is not None for g in outputs[0][1].values())
    for name, grad in outputs[0][1].items():
        if grad is None:  # variances take no gradient from the posterior-mean forward
            assert outputs[1][1][name] is None, name
            continue
        assert torch.allclose(outputs[1][1][name], grad, rtol=1e-4, atol=1e-6), name
    small = type(mnist_small)(**{**mnist_small.__dict__, "train": mnist_small.train.subset(256)})
    losses = {}
    for layout in (False, True):
        trained = copy.deepcopy(model)
        history = fit(trained, small, TrainConfig(epochs=1, batch_size=64), progress=False, log=lambda *_: None,
                      precision="fp32", channels_last=layout)
        assert all(p.is_contiguous() for p in trained.parameters())
        losses[layout] = history.epochs[-1]["loss"]
    assert abs(losses[True] - losses[False]) <= 1e-3 * abs(losses[False])
