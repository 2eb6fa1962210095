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
