"""Take a compressed model out of Python: ONNX (checked with onnxruntime), TorchScript, torch.export, or packed.

Every export is verified before it is reported: the exported artefact is loaded back (by onnxruntime for ONNX,
``torch.jit.load`` / ``torch.export.load`` for the PyTorch formats, :func:`load_packed` for the packed file) and run
on real inputs at two batch sizes, and the largest absolute difference to the PyTorch model's logits is returned.
The batch dimension is dynamic in every format, so the exported model serves any batch size.

ONNX goes through ``torch.onnx.export`` with the ``dynamo`` exporter (torch.export based, the maintained path) by
default; ``exporter="torchscript"`` selects the older tracer, which is faster to run and needs no ``onnxscript``.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("onnx", "torchscript", "torch_export", "packed")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts.pt", "torch_export": ".pt2", "packed": ".bcz"}
ONNX_EXPORTERS = ("dynamo", "torchscript")


class ExportError(RuntimeError):
    """The export failed, or the exported model does not reproduce the PyTorch model's outputs."""


def _require_onnx() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'bayescomp[export]'") from error
    return onnxruntime


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, exporter: str = "dynamo",
                opset: int | None = None) -> Path:
    """Write ``model`` as ONNX with a dynamic batch dimension (input ``images``, output ``logits``)."""
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; use {' or '.join(ONNX_EXPORTERS)}")
    _require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    kwargs: dict[str, Any] = {"input_names": ["images"], "output_names": ["logits"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    if exporter == "dynamo":
        kwargs.update(dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},),
                      verbose=False)
    else:
        kwargs.update(dynamo=False, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter logs every optional operator library it does not find
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (example,), None if exporter == "dynamo" else str(path), **kwargs)
            if exporter == "dynamo":
                program.save(str(path))
        except Exception as error:  # noqa: BLE001 - the exporter's own errors are many and varied
            raise ExportError(f"ONNX export of {type(model).__name__} failed: {error}") from error
        finally:
            quiet.setLevel(level)
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    ort = _require_onnx()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_outputs(path_or_session, images: torch.Tensor) -> torch.Tensor:
    session = path_or_session if hasattr(path_or_session, "run") else onnx_session(path_or_session)
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: images.detach().cpu().numpy()})[0])


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace ``model`` to TorchScript (the traced graph is shape-generic in the batch dimension)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path))
    return path


def export_program(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Save a ``torch.export`` ExportedProgram (``.pt2``) with a dynamic batch dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def _load_and_run(fmt: str, path: Path, images: torch.Tensor, classes: list[type[nn.Module]]) -> torch.Tensor:
    """Run the exported file; ``classes`` are the exported model's own containers, trusted to rebuild a packed
    copy of it (a packed file never imports the classes it names)."""
    if fmt == "onnx":
        return onnx_outputs(path, images)
    with torch.no_grad():
        if fmt == "torchscript":
            return torch.jit.load(str(path))(images)
        if fmt == "torch_export":
            return torch.export.load(str(path)).module()(images)
        from bayescomp.compress.packed import load_packed

        return load_packed(path, classes=classes)[0](images)


def export_model(model: nn.Module, fmt: str, path: str | Path, inputs: torch.Tensor, exporter: str = "dynamo",
                 tolerance: float = 1e-5) -> dict[str, Any]:
    """Export ``model`` in ``fmt`` and verify it on ``inputs`` (and on their first image alone, to exercise the
    dynamic batch). Returns ``{"format", "path", "bytes", "max_abs_diff", "max_rel_diff", "export_s"}``.

    The check is relative to the logits' scale: two float32 implementations of the same network (PyTorch's and
    onnxruntime's kernels sum in different orders) differ by a few units in the last place of the largest
    activations, so logits of size 50 can differ by 1e-5 while both are as close to the exact (float64) result.

    Raises:
        ExportError: the export failed or an output differs from PyTorch's by more than
            ``tolerance * max(1, max |logit|)``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "torch_export" and path.suffix != ".pt2":
        raise ValueError(f"torch.export files must end in .pt2, got {path}")
    model = model.eval()
    started = time.perf_counter()
    if fmt == "onnx":
        export_onnx(model, inputs[:2], path, exporter)
    elif fmt == "torchscript":
        export_torchscript(model, inputs[:2], path)
    elif fmt == "torch_export":
        export_program(model, inputs[:2], path)
    else:
        from bayescomp.compress.packed import save_packed

        save_packed(model, path)
    seconds = time.perf_counter() - started
    diff, scale = 0.0, 1.0
    from bayescomp.compress.packed import container_classes

    classes = container_classes(model)
    with torch.no_grad():
        for batch in (inputs, inputs[:1]):
            expected = model(batch)
            scale = max(scale, float(expected.abs().max()))
            diff = max(diff, float((_load_and_run(fmt, path, batch, classes) - expected).abs().max()))
    if not diff <= tolerance * scale:
        raise ExportError(f"the {fmt} export of {type(model).__name__} differs from PyTorch by {diff:.3g} "
                          f"(tolerance {tolerance:g} x max(1, largest |logit| = {scale:.3g})); the file is at {path}")
    return {"format": fmt, "path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff,
            "max_rel_diff": diff / scale, "export_s": seconds}


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, data_dir: str | None = None,
               exporter: str = "dynamo", check_examples: int = 64) -> dict[str, Any]:
    """Export the compressed model of a ``bayescomp run`` directory, checked on real test images.

    The packed format is the run's ``compressed.bcz`` itself (copied to ``out`` when given and verified).
    Writes ``export_<format>.json`` with the result into the run directory.
    """
    from bayescomp.compress.packed import load_packed
    from bayescomp.data_sources import load_data_source

    run_dir = Path(run_dir)
    source = run_dir / "compressed.bcz"
    record_path = run_dir / "run.json"
    if not source.exists() or not record_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a finished run directory (needs run.json and compressed.bcz); "
                                "run `bayescomp run` first")
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    record = json.loads(record_path.read_text())
    model, _ = load_packed(source)
    data = load_data_source(record["data"], data_dir or record.get("data_dir"),
                            val_size=record.get("val_size", 5000), seed=record.get("seed", 0),
                            test_subset=check_examples, image_size=record.get("image_size"))
    images = data.test.example(check_examples)
    target = Path(out) if out is not None else run_dir / f"compressed{SUFFIXES[fmt]}"
    result = export_model(model, fmt, target, images, exporter)
    result.update(run_dir=str(run_dir), check_examples=int(images.shape[0]),
                  exporter=exporter if fmt == "onnx" else None)
    (run_dir / f"export_{fmt}.json").write_text(json.dumps(result, indent=2))
    return result
