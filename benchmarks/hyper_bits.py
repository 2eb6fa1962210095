"""Bit widths of the hypernetwork's generated networks, from the committed compressors (no training).

Generation now gives every layer of a generated network the significand bits its kept weights' variance under
q(z | c) allows (:func:`bayescomp.hyper.generate.weight_variances`; BC's rule, Louizos et al. 2017, Sec. 4). This
script regenerates the networks of the committed results (``benchmarks/results/lenet5_<data>_hyper.json``: the
same compressor file, the same contexts), checks that the float networks are the committed ones (same weights
kept, same test error), and measures what the bits add: bits per layer, the compression with bits, the test error
of the quantised network beside the float one. The unconditional BC-GNJ model cut to each context
(``hyper_lenet5_<data>/unconditional_gnj.bcz``, the equal-epoch baseline of the committed table) is counted with
its own stored bit widths by the same formula, so the two are compared with bits as they were without:

    compression with bits = 32 x the teacher's weights / sum over layers of kept weights x (1 + exponent bits +
    significand bits)

(the exponent bits of a network are shared by its layers: :func:`bayescomp.compress.precision.exponent_bits` of its
largest weight). Nothing here is chosen: the bit rule is the library's default (``bits_reduce="mean"``, as the
Table 1 rows).

    python -m benchmarks.hyper_bits [--data mnist fashion-mnist]
    python -m benchmarks.hyper_bits --data mnist --hyper runs/<another compressor>/hyper.pt --tag <name>

``--hyper`` measures another compressor (e.g. one trained with ``weight_posterior``) on the same contexts; its float
networks then differ from the committed ones, and the committed medians are printed beside for comparison.
Writes ``benchmarks/results/hyper_bits_lenet5_<data>[_<tag>].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bayescomp.compress import save_quantized
from bayescomp.compress.packed import load_packed, packed_leaves
from bayescomp.compress.precision import LayerPrecision, compression_with_bits, exponent_bits
from bayescomp.compress.structure import prunable_modules
from bayescomp.hyper import Context, context_error, generate, load_hypernetwork
from bayescomp.hyper.pipeline import HyperRunConfig, _cut_teacher, load_run_data
from benchmarks._common import RESULTS, this_command, write_result
from benchmarks.hyper_contexts import weights_of


def stored_significand_bits(packed_meta: dict, model: torch.nn.Module) -> list[int]:
    """Significand bits of every Linear/Conv2d layer of a packed file, from its grid steps (2^-t); 23 where a
    layer is stored in float32."""
    leaves = packed_leaves(model)  # the file's layer indices
    steps = {int(k): float(v) for k, v in packed_meta.get("steps", {}).items()}
    bits = []
    for index, module in enumerate(leaves):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            step = steps.get(index)
            bits.append(23 if step is None else round(-math.log2(step)))
    return bits


def bits_rate(model: torch.nn.Module, significand: list[int], weights_dense: int) -> tuple[float, list[int]]:
    """(compression with bits, total bits per layer) of a plain network by the formula in the module docstring."""
    layers = prunable_modules(model)
    exp_bits = exponent_bits(max(float(m.weight.detach().abs().max()) for m in layers))
    precisions = [LayerPrecision(s, exp_bits) for s in significand]
    return (compression_with_bits([m.weight.numel() for m in layers], precisions, weights_dense),
            [p.total_bits for p in precisions])


def measure(data_name: str, hyper_path: Path | None = None) -> dict:
    started = time.perf_counter()
    committed = json.loads((RESULTS / f"lenet5_{data_name}_hyper.json").read_text())
    folder = RESULTS / f"hyper_lenet5_{data_name}"
    hyper_path = hyper_path or folder / "hyper.pt"
    hyper = load_hypernetwork(hyper_path).eval()
    config = HyperRunConfig(**json.loads((folder / "hyper_run.json").read_text()))
    data = load_run_data(config)
    unconditional, meta = load_packed(folder / "unconditional_gnj.bcz")
    unconditional_bits = stored_significand_bits(meta["_packed"], unconditional)
    rows, example = [], None
    for entry in committed["entries"]:
        context = Context.make(entry["classes"], data.num_classes, entry["budget"])
        generated = generate(hyper, context)
        example = example or generated
        cut = _cut_teacher(unconditional, context.classes)
        cut_rate, cut_totals = bits_rate(cut, unconditional_bits, hyper.dense_weights())
        rows.append({
            "classes": list(context.classes), "budget": context.budget,
            "weights_kept": generated.weights_kept, "committed_weights_kept": entry["weights_kept"],
            "test_error_pct": context_error(generated.model, data.test, context.classes),
            "committed_test_error_pct": entry["test_error_pct"],
            "test_error_pct_quantized": context_error(generated.quantized_model, data.test, context.classes),
            "bits_per_layer": generated.bits_per_layer, "compression_weights": hyper.dense_weights() /
            generated.weights_kept, "compression_bits": generated.compression_bits,
            "generate_ms": generated.generate_ms,
            "unconditional_weights_kept": weights_of(cut),
            "unconditional_test_error_pct": entry["unconditional_test_error_pct"],
            "unconditional_bits_per_layer": cut_totals, "unconditional_compression_bits": cut_rate,
        })
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    increase = [r["test_error_pct_quantized"] - r["test_error_pct"] for r in rows]
    summary = {
        "contexts": len(rows),
        "float_networks_match_committed": all(
            r["weights_kept"] == r["committed_weights_kept"]
            and abs(r["test_error_pct"] - r["committed_test_error_pct"]) < 1e-9 for r in rows),
        "median_weights_kept": med("weights_kept"), "median_compression_weights": med("compression_weights"),
        "median_compression_bits": med("compression_bits"),
        "median_bits_per_layer": [statistics.median(r["bits_per_layer"][i] for r in rows)
                                  for i in range(len(rows[0]["bits_per_layer"]))],
        "median_test_error_pct": med("test_error_pct"),
        "committed_median_test_error_pct": med("committed_test_error_pct"),
        "committed_median_weights_kept": med("committed_weights_kept"),
        "median_test_error_pct_quantized": med("test_error_pct_quantized"),
        "mean_error_increase_pts": statistics.fmean(increase), "max_error_increase_pts": max(increase),
        "median_generate_ms": med("generate_ms"),
        "median_unconditional_compression_bits": med("unconditional_compression_bits"),
        "median_unconditional_test_error_pct": med("unconditional_test_error_pct"),
        "median_unconditional_weights_kept": med("unconditional_weights_kept"),
        "unconditional_bits_per_layer": rows[0]["unconditional_bits_per_layer"],
        "contexts_generated_smaller_with_bits": sum(
            r["compression_bits"] >= r["unconditional_compression_bits"] for r in rows),
        "contexts_generated_smaller_in_weights": sum(
            r["weights_kept"] <= r["unconditional_weights_kept"] for r in rows),
    }
    return {"data": data_name, "hypernetwork": str(hyper_path), "hyper_config": asdict(hyper.config),
            "unconditional_file": f"benchmarks/results/{folder.name}/unconditional_gnj.bcz",
            "contexts_from": f"benchmarks/results/lenet5_{data_name}_hyper.json", "summary": summary,
            "entries": rows, "command": this_command(), "torch_threads": torch.get_num_threads(),
            "wall_time_s": time.perf_counter() - started, "_example": example}


def markdown(record: dict) -> str:
    s = record["summary"]
    return "\n".join([
        f"# Bit widths of generated networks: LeNet-5 on {record['data']}", "",
        f"Command: `{record['command']}`. Contexts and compressor: `{record['contexts_from']}`, "
        f"`{record['hypernetwork']}`; unconditional baseline: `{record['unconditional_file']}` (its stored bits). "
        "Medians over contexts; errors on the test images of each context's classes.", "",
        "| | generated | unconditional BC-GNJ cut to the context |", "|---|---|---|",
        f"| contexts | {s['contexts']} (float networks identical to the committed ones: "
        f"{'yes' if s['float_networks_match_committed'] else 'no; the committed compressor: '}"
        f"{'' if s['float_networks_match_committed'] else _committed(s)}) | same |",
        f"| weights kept | {s['median_weights_kept']:,.0f} ({s['median_compression_weights']:.1f}x) | "
        f"{s['median_unconditional_weights_kept']:,.0f} (generated no larger in "
        f"{s['contexts_generated_smaller_in_weights']} of {s['contexts']} contexts) |",
        f"| bits per layer | {'-'.join(f'{b:g}' for b in s['median_bits_per_layer'])} | "
        f"{'-'.join(map(str, s['unconditional_bits_per_layer']))} |",
        f"| compression with bits | {s['median_compression_bits']:.1f}x | "
        f"{s['median_unconditional_compression_bits']:.1f}x (generated at least as compressed in "
        f"{s['contexts_generated_smaller_with_bits']} of {s['contexts']}) |",
        f"| test error, float / at its bits | {s['median_test_error_pct']:.2f} / "
        f"{s['median_test_error_pct_quantized']:.2f} % (mean change {s['mean_error_increase_pts']:+.3f}, "
        f"largest {s['max_error_increase_pts']:+.2f} points) | {s['median_unconditional_test_error_pct']:.2f} % "
        "(float, from the committed table) |",
        f"| generation time | {s['median_generate_ms']:.1f} ms (bits included) | |", ""])


def _committed(summary: dict) -> str:
    return (f"{summary['committed_median_test_error_pct']:.2f} % at {summary['committed_median_weights_kept']:,.0f} "
            "weights")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hyper", type=Path, default=None, help="another compressor file (default: the committed)")
    parser.add_argument("--tag", default=None, help="suffix of the result files (needed with --hyper)")
    args = parser.parse_args(argv)
    if (args.hyper is None) != (args.tag is None):
        parser.error("--hyper and --tag go together (the committed compressor's results have no tag)")
    torch.set_num_threads(args.threads)
    for data_name in args.data:
        record = measure(data_name, args.hyper)
        stem = RESULTS / (f"hyper_bits_lenet5_{data_name}" + (f"_{args.tag}" if args.tag else ""))
        example = record.pop("_example")
        if args.tag:  # another compressor, not committed (megabytes): its first context's network is, at its bits
            path = stem.parent / f"{stem.name}_example.bcz"
            save_quantized(example.quantized_model, example.precisions, path,
                           {"classes": list(example.context.classes), "budget": example.context.budget,
                            "kind": "hyper-generated", "bits_per_layer": example.bits_per_layer,
                            "hypernetwork": record["hypernetwork"]})
            record["example_file"] = f"benchmarks/results/{path.name}"
        write_result(stem, record, markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
