"""`ssd prune`: TAO's min_weight pruning (nvidia_tao_tf1/core/pruning/pruning.py, cv/common/magnet_prune.py).

Per conv layer, each filter's statistic is the L2 norm of its kernel; statistics are normalised per layer (`max`:
divide by the largest; `L2`: divide by the vector's L2 norm and multiply by its length). Layers whose outputs meet
in an element-wise add must keep the same channels, so their statistics are merged first (-eq: union = max,
intersection = min, arithmetic_mean, geometric_mean). Filters with a statistic above the threshold are kept; the
count is raised to min(min_num_filters, filters), rounded up to a multiple of the granularity and capped, and the
highest-scoring filters of that count survive. The SSD heads (ssd_conf_*, ssd_loc_*) are never pruned.

The surgery itself (cutting each kept layer and every consumer's input channels, BN included) is done by
torch-pruning's dependency graph, whose groups are exactly TAO's equalisation sets.
"""

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from ...errors import TaoflowError
from ...status import StatusLogger
from .checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
EQUALIZATION = {
    "union": lambda s: np.max(s, 0),
    "intersection": lambda s: np.min(s, 0),
    "arithmetic_mean": lambda s: np.mean(s, 0),
    "geometric_mean": lambda s: np.exp(np.mean(np.log(np.maximum(s, 1e-30)), 0)),
}


def tao_names(model):
    """TAO layer name of every conv of the model (conv1, block_2b_conv_1, block_2b_conv_shortcut, ...)."""
    names = {model.conv1: "conv1"}
    for bname, block in model.blocks.items():
        for i, conv in enumerate(block.convs):
            names[conv] = f"{bname}_conv_{i + 1}"
        names[block.conv_shortcut] = f"{bname}_conv_shortcut"
    for b, seq in enumerate(model.expansion):
        for c, conv in enumerate(m for m in seq if isinstance(m, torch.nn.Conv2d)):
            names[conv] = f"ssd_expand_block_{b}_conv_{c}"
    for i, (conf, loc) in enumerate(zip(model.ssd_conf, model.ssd_loc)):
        names[conf], names[loc] = f"ssd_conf_{i}", f"ssd_loc_{i}"
    return names


def filter_norms(conv):
    return conv.weight.detach().double().flatten(1).norm(dim=1).numpy()


def normalize(stat, normalizer):
    if normalizer == "max":
        return stat / max(stat.max(), 1e-30)
    return stat / max(np.linalg.norm(stat), 1e-30) * len(stat)


def retained_count(stat, threshold, granularity, min_filters):
    n = len(stat)
    count = max(int((stat > threshold).sum()), min(min_filters, n))
    count = int(math.ceil(count / granularity) * granularity)
    return min(count, n)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def prune_model(model, input_shape, threshold=0.1, normalizer="max", equalization="union", granularity=8,
                min_filters=16, excluded=()):
    """Prune in place; return a report with per-layer kept/total filters and the parameter ratio."""
    if equalization not in EQUALIZATION:
        raise TaoflowError(f"unknown equalization criterion {equalization!r}")
    names = tao_names(model)
    unknown = set(excluded) - set(names.values())
    if unknown:
        raise TaoflowError(f"--excluded_layers names no layer of this model: {', '.join(sorted(unknown))}")
    before = count_params(model)
    model.eval()
    heads = list(model.ssd_conf) + list(model.ssd_loc)
    ignored = heads + [m for m, n in names.items() if n in excluded]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    plan = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[torch.nn.Conv2d]):
        convs = [it.dep.target.module for it in group
                 if isinstance(it.dep.target.module, torch.nn.Conv2d)
                 and getattr(it.dep.handler, "__name__", "") == "prune_out_channels"]
        if not convs or any(c in ignored for c in convs):
            continue  # a group touching a head or an excluded layer keeps all its channels
        stats = np.stack([normalize(filter_norms(c), normalizer) for c in convs])
        merged = EQUALIZATION[equalization](stats) if len(convs) > 1 else stats[0]
        keep_n = retained_count(merged, threshold, granularity, min_filters)
        keep = np.sort(np.argsort(-merged, kind="stable")[:keep_n])
        plan.append((convs, keep, len(merged)))
    report = {"layers": {}}
    for convs, keep, total in plan:
        for c in convs:
            report["layers"][names[c]] = [int(len(keep)), int(total)]
        drop = sorted(set(range(total)) - set(keep.tolist()))
        if drop:
            g = graph.get_pruning_group(convs[0], tp.prune_conv_out_channels, idxs=drop)
            if not graph.check_pruning_group(g):
                raise TaoflowError(f"cannot prune {names[convs[0]]}: torch-pruning rejected the group")
            g.prune()
    after = count_params(model)
    report.update(params_before=before, params_after=after, ratio=after / before)
    return report


def prune_checkpoint(model_path, output_file, threshold=0.1, normalizer="max", equalization="union",
                     granularity=8, min_filters=16, excluded=(), results_dir=None):
    state = load_checkpoint(model_path)
    model = build_from_checkpoint(state)
    status = StatusLogger(results_dir)
    status.write("Starting SSD pruning.", status="STARTED")
    report = prune_model(model, state["arch"]["input"], threshold, normalizer, equalization, granularity,
                         min_filters, excluded)
    output = Path(output_file)
    if output.suffix != ".pth":
        output = output.with_name(output.name + ".pth")
    if output.exists():
        raise TaoflowError(f"{output} already exists; choose another -o")
    # A pruned model is retrained from scratch of the optimizer: keep weights and architecture, drop the rest.
    save_checkpoint(output, model, state["arch"], state["classes"], spec_text=state.get("spec"),
                    extra={"pruned_from": str(model_path), "pruning": {k: v for k, v in report.items()
                                                                       if k != "layers"}})
    log.info("Pruning ratio (pruned model / original model): %s", report["ratio"])
    if report["params_after"] == report["params_before"]:
        # Not an error (TAO says nothing either), but a user comparing the pruned and unpruned rows should know why.
        log.warning("no filter was pruned: every filter's normalised L2 norm is above -pth %g (with -eq %s). Raise "
                    "-pth, or train longer with an L1 regularizer so that unneeded filters shrink",
                    threshold, equalization)
    status.write("Pruning finished successfully.", status="SUCCESS", kpi={"pruning_ratio": report["ratio"],
                                                                          "param_count": report["params_after"]})
    report["output"] = str(output)
    return report


def prune_cli(args):
    report = prune_checkpoint(args.model, args.output_file, args.pruning_threshold, args.normalizer,
                              args.equalization_criterion, args.pruning_granularity, args.min_num_filters,
                              args.excluded_layers, args.results_dir)
    print(f"Pruning ratio (pruned model / original model): {report['ratio']}")
    print(f"pruned model: {report['output']} ({report['params_before']} -> {report['params_after']} parameters)")
    return 0
