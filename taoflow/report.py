"""Run reports: training curves, PR curves, a grid of annotated detections, model comparison and the passport.

The same files feed Prefect artifacts and the ClearML task, and stay in the run directory for people who use
neither.
"""

import math

import cv2
import numpy as np


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display on servers and CI), imported when a plot is drawn: a
    re-run that reuses the report draws nothing and should not pay for the import."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def training_curves(histories, out_png):
    """Loss and mAP per epoch for each training stage (train, retrain) side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        axes[0].plot(epochs, [r.get("loss", math.nan) for r in rows], label=name)
        # an epoch without validation has no mAP: NaN (the pipeline's history) or None (an empty CSV cell)
        pts = [(r["epoch"], r["mAP"]) for r in rows if r.get("mAP") is not None and r["mAP"] == r["mAP"]]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=name)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="validation mAP", xlabel="epoch", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def pr_curves(pr_by_class, out_png, title="precision / recall"):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, pr in pr_by_class.items():
        ax.plot(pr["recall"], pr["precision"], label=name)
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def detection_grid(image_paths, out_png, cols=4, cell=(320, 240)):
    """Tile annotated inference images (TAO's images_annotated/) into one picture, as TAO's notebook shows."""
    tiles = []
    for p in image_paths:
        img = cv2.imread(str(p))
        if img is not None:
            tiles.append(cv2.resize(img, cell, interpolation=cv2.INTER_AREA))
    if not tiles:
        return None
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + cols], 1) for i in range(0, len(tiles), cols)]
    cv2.imwrite(str(out_png), np.concatenate(rows, 0))
    return out_png


def per_class_markdown(rows, class_counts=None):
    """One row per class: its objects in each side of the split (the data stage's coverage table) and its AP for
    each model that was evaluated, so a low mAP can be traced to the class that makes it."""
    classes = sorted({k[3:] for r in rows for k in r if k.startswith("AP_")} | set((class_counts or {}).get(
        "classes", {})))
    if not classes:
        return []
    evaluated = [r for r in rows if any(k.startswith("AP_") for k in r)]
    counts = (class_counts or {}).get("classes", {})
    lines = ["## AP per class", "", "| class | training objects | val objects | "
             + " | ".join(f"AP {r['model']}" for r in evaluated) + " |", "|---" * (3 + len(evaluated)) + "|"]
    for c in classes:
        n = counts.get(c, {})
        aps = " | ".join("n/a" if r.get(f"AP_{c}") is None else f"{r[f'AP_{c}']:.4f}" for r in evaluated)
        lines.append(f"| {c} | {n.get('training', 'n/a')} | {n.get('val', 'n/a')} | {aps} |")
    unmapped = (class_counts or {}).get("unmapped")
    if unmapped:
        lines += ["", "Objects of classes no target class maps to (dropped, as TAO drops them): "
                  + ", ".join(f"{c} {n}" for c, n in unmapped.items())]
    return lines + [""]


def pruning_outcome(rows):
    """One sentence under the model table: the retrained model's parameters, GFLOPs and CPU latency against the
    unpruned model's (what pruning bought); nothing when a value cannot be measured here (TAO models)."""
    by = {r["model"]: r for r in rows}
    u, r = by.get("unpruned", {}), by.get("retrained", {})
    keys = ("params", "gflops", "cpu_latency_ms")
    if not all(u.get(k) and r.get(k) for k in keys):
        return []
    return [f"Pruned and retrained vs unpruned: {r['params'] / u['params']:.0%} of the parameters, "
            f"{r['gflops'] / u['gflops']:.0%} of the GFLOPs, {u['cpu_latency_ms'] / r['cpu_latency_ms']:.1f}x as "
            f"fast on this CPU (batch 1).", ""]


def summary_markdown(passport, rows, gates, paths, class_counts=None):
    """The report a person reads first: gates, model comparison, AP per class, passport."""
    lines = ["# train-ssd report", "", f"Passport `{passport['id']}`", ""]
    lines += ["## Gates", "", "| gate | passed | detail |", "|---|---|---|"]
    lines += [f"| {g['name']} | {'yes' if g['passed'] else '**no**'} | {g['detail']} |" for g in gates]
    classes = sorted({k[3:] for r in rows for k in r if k.startswith("AP_")})
    lines += ["", "## Models", "", "| model | params | GFLOPs | mAP | " + " | ".join(f"AP {c}" for c in classes)
              + " | CPU ms |", "|---" * (5 + len(classes)) + "|"]
    def num(value, fmt):  # None: not measurable here (a TAO .tlt/.hdf5 model cannot be loaded without TAO)
        return "n/a" if value is None else format(value, fmt)
    for r in rows:
        aps = " | ".join(num(r.get('AP_' + c, float('nan')), ".4f") for c in classes)
        lines.append(f"| {r['model']} | {num(r['params'], ',')} | {num(r['gflops'], '.3f')} | {num(r['mAP'], '.4f')} "
                     f"| {aps} | {num(r['cpu_latency_ms'], '.1f')} |")
    lines += [""] + pruning_outcome(rows) + per_class_markdown(rows, class_counts)
    lines += ["## Passport (stage keys, raw data to exported model)", "", "| stage | key |", "|---|---|"]
    lines += [f"| {stage} | `{key}` |" for stage, key in passport["stages"].items()]
    lines += ["", "## Files", ""] + [f"- {name}: `{path}`" for name, path in paths.items() if path]
    return "\n".join(lines) + "\n"
