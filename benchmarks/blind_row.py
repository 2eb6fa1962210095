"""A Table 1 row rerun blind: its post-training setting chosen on the validation split by a rule fixed here, before
the test set is read (issue 20, items 1 and 2).

The rule, written before the run:

1. Train the committed row's recipe (:func:`recipe`) with ``--epochs`` Bayesian epochs (the
   paper's schedule is 200 for the LeNets) into ``runs/blind/<model>_<method>_<epochs>``. With
   ``--prior-variants`` (each a complete prior-settings dict as JSON, replacing the recipe's), every variant is
   trained into its own ``..._v<i>`` directory: this is how a row whose *recipe* was chosen on the test set
   (Turbo-VBI's slab width on LeNet-300-100) gets its recipe chosen again, on validation.
2. For every variant and every search tolerance in ``--tolerances``, prune the posterior with the automatic search
   on the validation split at that tolerance, fine-tune the kept weights with the recipe's fine-tuning (the
   validation guard included) and measure the **validation** error. No test figure is computed here. A method
   whose own settings carry the tolerance (self-compression deletes kernels within its ``tolerance_pct`` and does
   not fine-tune afterwards) gets the swept tolerance there too (:func:`at_tolerance`; a step added before its
   first blind run).
3. Keep the candidates whose validation error is at most the dense model's validation error plus ``--allowance``
   points (default 0.2: the paper's own LeNet-300-100 loss, 1.6 % dense to 1.8 % compressed); among them choose the
   one with the largest compression (the smaller tolerance, then the earlier variant, on a tie). Compression is
   the method's own measure (``--metric``, fixed per method in :data:`METRICS`): architecture compression for the
   group priors, whose point is removing neurons and filters; non-zero weights for Sparse VD and Turbo-VBI, whose
   point is per-weight sparsity. If none qualifies, the candidate with the lowest validation error at the smallest
   tolerance is taken, and the record says so.
4. With ``--choose-bits`` (a step added later, fixed before the runs that use it): the chosen candidate is pruned
   and fine-tuned again with the per-layer bit reduction of the authors' reference code (the ceiling of the *mean*
   of the kept weights' bits, :data:`REFERENCE_BITS`) in place of the recipe's (the *max*, a conservative choice
   made early in this project). The reference reduction is taken if the model quantised with it has a validation
   error at most ``--bits-allowance`` points (default 0.1, 5 of the 5,000 validation images) above the same
   fine-tuned model unquantised; otherwise the recipe's stays (:func:`choose_bits`). Pruning and fine-tuning do
   not depend on the bits, so only the quantised weights differ.
5. Only then run the pipeline once with that variant and tolerance (it reuses the trained posterior), which reads
   the test set for the reported figures, and publish them as ``<model>_mnist_<method>_blind<epochs>.{json,bcz,md}``
   with the candidates in ``blind_<model>_mnist_<method>_<epochs>.{json,md}``.

    OMP_NUM_THREADS=1 python -m benchmarks.blind_row --model lenet300 --method ghs --epochs 200
    OMP_NUM_THREADS=1 python -m benchmarks.blind_row --model lenet300 --method turbo --epochs 30 \
        --prior-variants '{}' '{"slab_std": 10.0}'

``--train-only`` stops after training (no candidate, no test figure): long trainings can run first, and the same
command without it resumes from the trained posteriors for the rule's steps.

``--post-variants`` (a step added later, fixed before the runs that use it) widens step 2: each JSON dict of the
method's post-training settings (:attr:`~bayescomp.methods.Method.post_training_settings`, e.g. Sparse VD's
``prune_threshold``) is applied to every prior variant's trained posterior and its tolerances, and step 3 chooses
among all of them (ties to the earlier dict). They share the posterior: no extra training.

``--compress-set key=value`` (a step added later, fixed before the runs that use it) changes how every candidate
reads the posterior (:class:`~bayescomp.compress.CompressConfig`): ``thresholds=search`` lets a per-weight prior's
search tolerance remove whole neurons and filters beyond its weight mask, in the order of its group statistic, where
its default reads the weight mask alone and every tolerance keeps the same weights.

``--prior-set key=value`` changes one prior setting of the recipe (e.g. ``weight_sampling=batch``) and
``--tag`` names such a run apart (``runs/blind/<model>_<method>_<epochs>_<tag>``, ``..._blind<epochs>_<tag>``
files): a tagged run is a variant of the row, not the row's rerun, so RESULTS.md does not count it among the
row's seeds.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from bayescomp.compress import CompressConfig, quantize_model
from bayescomp.methods import RunContext, get_method
from bayescomp.methods.runner import guarded_finetune, prepare_and_train
from bayescomp.pipeline import RunConfig, _prepare_run_dir, dense_model, load_data, run
from bayescomp.train import TrainConfig, evaluate
from benchmarks._common import RESULTS, publish, this_command
from benchmarks.seeds import with_seed
from benchmarks.table1 import RECIPES, build_config


def recipe(model: str, method: str, seed: int) -> RunConfig:
    """The row's recipe: ``benchmarks/table1.py``'s ``RECIPES`` where it has one, else the settings recorded in the
    committed result (BC-GNJ's rows were made by ``benchmarks/gnj_mnist.py``)."""
    if (model, method) in RECIPES:
        return build_config(model, method, seed)
    committed = RESULTS / f"{model}_mnist_{method}.json"
    if not committed.exists():
        raise SystemExit(f"no recipe for {model} {method}: neither in benchmarks/table1.py nor in {committed}")
    return RunConfig.from_dict(with_seed(json.loads(committed.read_text())["config"], seed))


#: The compression measure each method's candidates are ranked by (rule step 3); any other method: architecture.
METRICS = {"svd": "nonzero", "turbo": "nonzero"}


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names, shapes and values): equal digests, equal pruned models."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def at_tolerance(method, config: RunConfig, tolerance: float) -> RunConfig:
    """``config`` with its search tolerance set to ``tolerance`` points: the shared search's, and the method's own
    where its settings carry one read after training (self-compression deletes kernels within its ``tolerance_pct``
    and never calls the shared search), so the rule's sweep reaches every method."""
    config = replace(config, compress=replace(config.compress, tolerance_pct=tolerance))
    if "tolerance_pct" in method.post_training_settings:
        config = replace(config, prior={**dict(config.prior), "tolerance_pct": tolerance})
    return config


def candidate(method, ctx: RunContext, posterior: torch.nn.Module, tolerance: float, dense_val: float,
              seen: dict[str, dict] | None = None) -> dict:
    """Prune at ``tolerance`` and fine-tune as the pipeline does; validation figures only. A tolerance that prunes
    to exactly the model an earlier one did (``seen``: digest -> figures; Turbo-VBI's support decides alone) reuses
    its figures: fine-tuning is seeded, so it would repeat them bit for bit."""
    config = at_tolerance(method, ctx.config, tolerance)
    trial = replace(ctx, config=config, settings=method.make_settings(config.prior), log=lambda *_: None,
                    run_dir=None, state=dict(ctx.state), extras=dict(ctx.extras), metadata=dict(ctx.metadata))
    result = method.compress(copy.deepcopy(posterior), trial)
    key = model_digest(result.model)
    if seen is not None and key in seen:
        return {**seen[key], "tolerance_pct": tolerance, "same_model_as_tolerance": seen[key]["tolerance_pct"]}
    figures = _measure(result, trial, tolerance, dense_val, finetune=method.finetune_after_compress)
    if seen is not None:
        seen[key] = figures
    return figures


def _measure(result, trial: RunContext, tolerance: float, dense_val: float, finetune: bool = True) -> dict:
    """Fine-tune (guarded, where the method's pipeline fine-tunes: ``finetune``) and measure one pruned model on the
    validation split."""
    if finetune and trial.config.finetune.epochs > 0:
        check = guarded_finetune(result.model, trial)  # as the pipeline does, validation only
        before = check["val_error_pct_before"]
        after = check["val_error_pct_after"] if check["kept"] else before
    else:
        before = after = evaluate(result.model, trial.data.val)["error_pct"]
    quantized = evaluate(quantize_model(result.model, result.precisions), trial.data.val)["error_pct"]
    return {"tolerance_pct": tolerance, "kept_architecture": "-".join(map(str, result.architecture_kept)),
            "compression_architecture": result.compression_architecture,
            "bits_reduce": trial.config.compress.bits_reduce, "bits_per_layer": result.bits_per_layer,
            "compression_bits": result.compression_bits, "val_error_pct_quantized": quantized,
            "compression_nonzero": result.compression_nonzero, "val_error_pct_pruned": before,
            "val_error_pct": after, "qualifies": after <= dense_val + trial.extras["allowance"] + 1e-9}


def seed_suffix(seed: int, tag: str = "") -> str:
    """Seed 0 keeps the original file names; another seed writes beside it (``..._seed1``), never over it; a
    tagged variant (``--tag``) writes ``..._<tag>`` (``..._<tag>_seed1``)."""
    return (f"_{tag}" if tag else "") + (f"_seed{seed}" if seed else "")


def with_finetune(finetune: TrainConfig, epochs: int | None, lr: float | None,
                  distill: float | None = None) -> TrainConfig:
    """The recipe's fine-tuning with ``--finetune-epochs`` / ``--finetune-lr`` / ``--distill`` applied (None keeps
    the recipe's); a schedule the recipe never set (Sparse VD's rows do not fine-tune) becomes cosine, as table1's
    recipes use. ``distill``: weight alpha of distillation from the dense model (T = 4, :mod:`bayescomp.distill`)."""
    if distill is not None:
        if not 0.0 < distill <= 1.0:
            raise SystemExit(f"--distill must be in (0, 1], got {distill}")
        finetune = replace(finetune, distill=distill)
    if epochs is None and lr is None:
        return finetune
    if epochs is not None and epochs < 0:
        raise SystemExit(f"--finetune-epochs must be >= 0, got {epochs}")
    if lr is not None and not lr > 0:
        raise SystemExit(f"--finetune-lr must be positive, got {lr}")
    return replace(finetune, epochs=finetune.epochs if epochs is None else epochs,
                   lr=finetune.lr if lr is None else lr, lr_schedule="cosine")


def parse_prior_set(items: list[str], flag: str = "--prior-set") -> dict:
    """``["weight_sampling=batch", "clip_var=0.2"]`` -> {"weight_sampling": "batch", "clip_var": 0.2}: each value
    read as JSON where it parses (numbers, booleans, null), else kept as a string."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def compress_changes(items: list[str]) -> dict:
    """``--compress-set`` items (``["thresholds=search"]``) as :class:`~bayescomp.compress.CompressConfig` changes;
    unknown fields are refused, naming the known ones. Reading the posterior happens after training, so these reuse
    the trained posteriors (a run directory's ``compress`` section is a post-training field)."""
    changes = parse_prior_set(items, "--compress-set")
    known = {f.name for f in fields(CompressConfig)}
    unknown = set(changes) - known
    if unknown:
        raise SystemExit(f"--compress-set: {sorted(unknown)} are not CompressConfig fields (those are: "
                         f"{', '.join(sorted(known))})")
    return changes


def post_variants(method, given: list[dict] | None) -> list[dict]:
    """The ``--post-variants`` dicts checked against the method's post-training settings (``[{}]`` when none are
    given): a setting that training reads would need a posterior of its own."""
    if not given:
        return [{}]
    for post in given:
        if not isinstance(post, dict):
            raise SystemExit(f"--post-variants expects JSON objects, got {post!r}")
        unknown = set(post) - set(method.post_training_settings)
        if unknown:
            raise SystemExit(f"--post-variants: {sorted(unknown)} are not post-training settings of method "
                             f"{method.name!r} (those are: {sorted(method.post_training_settings) or 'none'})")
    return [dict(post) for post in given]


def choose(candidates: list[dict], metric: str = "architecture") -> tuple[dict, bool]:
    """The rule of step 3: the most compressed qualifying candidate (by ``compression_<metric>``; ties to the
    smaller tolerance, then the earlier variant), else the lowest validation error at the smallest tolerance."""
    qualifying = [c for c in candidates if c["qualifies"]]
    if qualifying:
        return max(qualifying, key=lambda c: (c[f"compression_{metric}"], -c["tolerance_pct"],
                                              -c.get("variant", 0), -c.get("post_variant", 0))), True
    smallest = min(c["tolerance_pct"] for c in candidates)
    return min((c for c in candidates if c["tolerance_pct"] == smallest),
               key=lambda c: (c["val_error_pct"], c.get("variant", 0), c.get("post_variant", 0))), False


#: The per-layer bit reduction of the authors' reference code (``compression.py``: ``dist_fun = mean``).
REFERENCE_BITS = "mean"


def choose_bits(recipe_bits: dict, reference_bits: dict, allowance: float) -> dict:
    """Rule step 4: the reference reduction's figures if its quantised validation error is at most the fine-tuned,
    unquantised validation error + ``allowance`` points, else the recipe's. Both dicts are :func:`_measure`
    figures of the same pruned, fine-tuned model (only the bits differ), so the unquantised errors agree."""
    if reference_bits["kept_architecture"] != recipe_bits["kept_architecture"]:
        raise ValueError("the bit reductions were measured on different pruned models")
    accept = reference_bits["val_error_pct_quantized"] <= reference_bits["val_error_pct"] + allowance + 1e-9
    return reference_bits if accept else recipe_bits


METRIC_WORDS = {"architecture": "architecture compression", "nonzero": "non-zero compression"}


def markdown(record: dict) -> str:
    metric = record.get("metric", "architecture")
    variants = record.get("variants", [None])
    chosen = record["chosen"]
    chosen_text = f"tolerance {chosen['tolerance_pct']}"
    posts = record.get("post_variants") or []
    if len(variants) > 1:
        chosen_text += f", variant {chosen['variant']} (prior {json.dumps(chosen['prior'])})"
    if posts:
        chosen_text += f", post-training settings {chosen['post_variant']} (`{json.dumps(chosen['post'])}`)"
    tag = f", variant `{record['tag']}` (a changed recipe, not the row's rerun)" if record.get("tag") else ""
    lines = [(f"# Blind rerun: {record['model']} {record['method']}, {record['epochs']} Bayesian epochs, "
              f"seed {record.get('seed', 0)}{tag}"),
             "", (f"Command: `{record['command']}` ({record.get('device', 'CPU')}, {record['torch_threads']} CPU "
                  f"thread(s), {record['wall_time_s'] / 60:.0f} min"
                  + (f"; the posterior was trained on {record['trained_on']}" if record.get("trained_on") else "")
                  + ")"), "",
             ("Rule (fixed before the run, see `benchmarks/blind_row.py`): among the "
              + ("prior variants and " if len(variants) > 1 else "")
              + ("post-training settings and " if posts else "") + f"search tolerances, the largest "
              f"{METRIC_WORDS[metric]} whose fine-tuned validation error is at most the dense model's "
              f"({record['dense_val_error_pct']:.2f} %) + {record['allowance_pct']} points. Chosen: {chosen_text}"
              + ("" if record["rule_met"] else " (no candidate qualified: the lowest validation error at the "
                                                 "smallest tolerance)") + "."), ""]
    if record.get("bits_choice"):
        bits = record["bits_choice"]
        rows = [f"`{b['bits_reduce']}`: bits {'-'.join(map(str, b['bits_per_layer']))}, {b['compression_bits']:.1f}x, "
                f"quantised validation error {b['val_error_pct_quantized']:.2f} %" for b in bits["tried"]]
        lines += [(f"Bits (rule step 4): the reference's `{REFERENCE_BITS}` reduction if its quantised validation "
                   f"error is at most the fine-tuned model's ({bits['tried'][0]['val_error_pct']:.2f} %) + "
                   f"{bits['allowance_pct']} points. Tried: " + "; ".join(rows)
                   + f". Chosen: `{bits['chosen']}`."), ""]
    if record.get("finetunes") is False:
        lines += ["This method does not fine-tune after pruning: the fine-tuned column repeats the pruned model's.", ""]
    if any("same_model_as_tolerance" in c for c in record["candidates"]):
        lines += ["(= t): that tolerance pruned to exactly the model of tolerance t, whose figures it shares.", ""]
    if len(variants) > 1:
        lines += ["Prior variants: " + "; ".join(f"{i}: `{json.dumps(v)}`" for i, v in enumerate(variants)), ""]
    if record.get("compress_set"):
        lines += ["How the posterior is read, changed from the recipe's for every candidate: "
                  f"`{json.dumps(record['compress_set'])}`.", ""]
    if posts:
        lines += ["Post-training settings (they share each variant's posterior): "
                  + "; ".join(f"{i}: `{json.dumps(v)}`" for i, v in enumerate(posts)), ""]
    head = (("| variant " if len(variants) > 1 else "") + ("| post " if posts else "")
            + "| tolerance | kept | × architecture | × non-zero | val error pruned % | val error fine-tuned % "
              "| qualifies |")
    lines += [head, "|---" * head.count("| ") + "|"]
    for c in record["candidates"]:
        nonzero = f"{c['compression_nonzero']:.1f}" if "compression_nonzero" in c else "-"
        same = f" (= {c['same_model_as_tolerance']})" if "same_model_as_tolerance" in c else ""
        lines.append(("" if len(variants) == 1 else f"| {c['variant']} ")
                     + (f"| {c['post_variant']} " if posts else "")
                     + f"| {c['tolerance_pct']}{same} | {c['kept_architecture']} | "
                     f"{c['compression_architecture']:.1f} | {nonzero} | {c['val_error_pct_pruned']:.2f} | "
                     f"{c['val_error_pct']:.2f} | "
                     f"{'yes' if c['qualifies'] else 'no'} |")
    r = record["result"]
    headline = r[f"compression_{metric}"]
    unit = "x non-zero" if metric == "nonzero" else "x"
    lines += ["", (f"Test set, read once for the chosen setting: **{r['test_error_pct']:.2f} % at "
                   f"{headline:.1f}{unit}** (architecture {r['kept_architecture']}, "
                   f"{r['compression_architecture']:.1f}x; bits "
                   f"{r['compression_bits']:.1f}x, non-zero {r['compression_nonzero']:.1f}x); dense "
                   f"{r['dense_test_error_pct']:.2f} %. Files: `{record['published']}` and its `.bcz`."), ""]
    return "\n".join(lines)


def device_name(device: str | None) -> str:
    """Where the run trained, in words: ``"CPU"`` or the accelerator's name (``"cuda: NVIDIA H200"``)."""
    if device is None or torch.device(device).type == "cpu":
        return "CPU"
    if torch.device(device).type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    return str(device)


def train_variant(config: RunConfig, run_dir: Path, device: str | None = None, cuda_graphs: bool = False) -> tuple:
    """Dense model, data and trained posterior of one variant (each resumes from its own run directory); training
    and fine-tuning run on ``device`` (the CPU when None), the Bayesian steps as CUDA graphs if ``cuda_graphs``."""
    _prepare_run_dir(config, run_dir, False, print)
    data = load_data(config)
    dense = dense_model(config, data, print, False, device)
    method = get_method(config.method)
    ctx = RunContext(config=config, data=data, dense=dense, run_dir=run_dir,
                     settings=method.make_settings(config.prior), log=print, progress=False, device=device,
                     cuda_graphs=cuda_graphs, extras={})
    return method, ctx, prepare_and_train(method, ctx).model  # resumes from runs/blind/.../bayes.ckpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--method", default="ghs")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0])
    parser.add_argument("--allowance", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="train and fine-tune there (e.g. cuda; default: the CPU)")
    parser.add_argument("--trained-on", default="",
                        help="where the posterior in the run directory was trained, when not here (recorded)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each Bayesian training step as one CUDA graph (bayescomp.cuda_graphs)")
    parser.add_argument("--prior-variants", type=json.loads, nargs="+", default=None, metavar="JSON",
                        help="complete prior-settings dicts to choose among on validation (default: the recipe's)")
    parser.add_argument("--post-variants", type=json.loads, nargs="+", default=None, metavar="JSON",
                        help="post-training settings of the method (e.g. '{\"prune_threshold\": 2}') to choose among "
                             "as well, on each variant's trained posterior: a changed rule, so it needs --tag")
    parser.add_argument("--prior-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="change these settings of the recipe's prior (applied to every variant)")
    parser.add_argument("--compress-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="change these settings of how the posterior is read (CompressConfig, e.g. "
                             "thresholds=search): no retraining, but a changed rule, so it needs --tag")
    parser.add_argument("--tag", default="", help="name of this variant of the row (required with --prior-set)")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or resume) every variant's posterior and stop: no candidate, no test figure; "
                             "the same command without it then resumes from the trained posteriors")
    parser.add_argument("--choose-bits", action="store_true",
                        help="rule step 4: the reference code's mean bit reduction where validation allows it")
    parser.add_argument("--bits-allowance", type=float, default=0.1,
                        help="points of validation error the reference bits may add to the fine-tuned model's")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="fine-tune every candidate this many epochs (cosine, guarded on validation) in place of "
                             "the recipe's fine-tuning: a changed recipe, so it needs --tag")
    parser.add_argument("--finetune-lr", type=float, default=None, help="with --finetune-epochs: its learning rate")
    parser.add_argument("--distill", type=float, default=None, metavar="ALPHA",
                        help="fine-tune every candidate by distillation from the dense model with this weight "
                             "(T = 4): a changed recipe, so it needs --tag")
    args = parser.parse_args()
    changes_recipe = (args.prior_set or args.compress_set or args.post_variants or args.choose_bits
                      or args.finetune_epochs is not None or args.finetune_lr or args.distill is not None)
    if changes_recipe and not args.tag:
        raise SystemExit("--prior-set, --compress-set, --post-variants, --choose-bits, --finetune-* and --distill "
                         "change the recipe: give the run a --tag so it cannot overwrite the row")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base = recipe(args.model, args.method, args.seed)
    base.bayes = replace(base.bayes, epochs=args.epochs)
    base.finetune = with_finetune(base.finetune, args.finetune_epochs, args.finetune_lr, args.distill)
    base.latency, base.plots = False, False
    compress_set = compress_changes(args.compress_set)
    base.compress = replace(base.compress, **compress_set)
    metric = METRICS.get(base.method, "architecture")
    changes = parse_prior_set(args.prior_set)
    variants = [{**prior, **changes} for prior in (args.prior_variants or [dict(base.prior)])]
    posts = post_variants(get_method(base.method), args.post_variants)
    seed_tag = seed_suffix(args.seed, args.tag)
    root = Path("runs/blind") / f"{args.model}_{args.method}_{args.epochs}{seed_tag}"
    candidates, trained = [], []
    for index, prior in enumerate(variants):
        config = replace(base, prior=dict(prior))
        run_dir = root if len(variants) == 1 else root.with_name(f"{root.name}_v{index}")
        method, ctx, posterior = train_variant(config, run_dir, args.device, args.cuda_graphs)
        if args.train_only:
            print(f"trained {run_dir}", flush=True)
            continue
        dense_val = evaluate(ctx.dense, ctx.data.val)["error_pct"]  # the same dense model for every variant
        ctx = replace(ctx, extras={"allowance": args.allowance})
        trained.append((config, run_dir, method, ctx, posterior))
        for post_index, post in enumerate(posts):
            post_ctx = replace(ctx, config=replace(config, prior={**prior, **post}))
            labels = {"post_variant": post_index, "post": dict(post)} if args.post_variants else {}
            seen: dict[str, dict] = {}
            for tolerance in args.tolerances:
                candidates.append({"variant": index, "prior": dict(prior), **labels,
                                   **candidate(method, post_ctx, posterior, tolerance, dense_val, seen)})
                print(json.dumps(candidates[-1]), flush=True)
    if args.train_only:
        return
    chosen, rule_met = choose(candidates, metric)
    config, run_dir, method, ctx, posterior = trained[chosen["variant"]]
    config = replace(config, prior={**config.prior, **chosen.get("post", {})})
    ctx = replace(ctx, config=config)
    final = at_tolerance(method, config, chosen["tolerance_pct"])
    bits_choice = None
    if args.choose_bits and final.compress.bits_reduce != REFERENCE_BITS:
        tried = [{k: v for k, v in chosen.items() if k not in ("variant", "prior")}]
        reference = replace(final, compress=replace(final.compress, bits_reduce=REFERENCE_BITS))
        tried.append(candidate(method, replace(ctx, config=reference), posterior, chosen["tolerance_pct"], dense_val))
        picked = choose_bits(tried[0], tried[1], args.bits_allowance)
        final = replace(final, compress=replace(final.compress, bits_reduce=picked["bits_reduce"]))
        bits_choice = {"allowance_pct": args.bits_allowance, "tried": tried, "chosen": picked["bits_reduce"]}
        print(json.dumps(bits_choice), flush=True)
    report = run(final, run_dir, log=print, progress=False, command=this_command(), device=args.device)
    suffix = f"_blind{args.epochs}{seed_tag}"
    published = publish(report, run_dir, {"selection": f"benchmarks/results/blind_{args.model}_mnist_{args.method}_"
                                                       f"{args.epochs}{seed_tag}.json", "selection_metric": metric,
                                                       **({"selection_tag": args.tag, "selection_prior_set": changes}
                                                          if args.tag else {}),
                                                       **({"selection_compress_set": compress_set}
                                                          if compress_set else {}),
                                                       **({"selection_bits_reduce": bits_choice["chosen"]}
                                                          if bits_choice else {})},
                        suffix=suffix)
    record = {"model": args.model, "method": args.method, "epochs": args.epochs, "seed": args.seed, "tag": args.tag,
              "dense_val_error_pct": dense_val, "allowance_pct": args.allowance, "metric": metric,
              "variants": variants, **({"post_variants": posts} if args.post_variants else {}),
              **({"compress_set": compress_set} if compress_set else {}),
              "candidates": candidates, "finetunes": method.finetune_after_compress,
              "chosen": chosen, "rule_met": rule_met, **({"bits_choice": bits_choice} if bits_choice else {}),
              "published": str(published.relative_to(RESULTS.parent.parent)),
              "result": {k: report[k] for k in ("test_error_pct", "compression_architecture", "compression_bits",
                                                "compression_nonzero", "kept_architecture", "dense_test_error_pct")},
              "command": this_command(), "torch_threads": torch.get_num_threads(), "device": device_name(args.device),
              "cuda_graphs": args.cuda_graphs, **({"trained_on": args.trained_on} if args.trained_on else {}),
              "wall_time_s": time.perf_counter() - started}
    stem = f"blind_{args.model}_mnist_{args.method}_{args.epochs}{seed_tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
