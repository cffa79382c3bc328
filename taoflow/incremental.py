"""Incremental conversion: when a dataset gains or changes images, convert only those.

A unit is one image with its label (same stem, in sibling `images|imgs|image_2|image` and `labels|label_2|label`
folders under the same split). Units whose files are byte-identical to the previous conversion of the same dataset
(same converter settings and code) keep their previous outputs (hard links, never copies of images); changed and
new units are converted in a delta tree of hard links; removed units drop out. The result is the same as a full
conversion, at the cost of the delta only.
"""

import json
import os
import shutil
from pathlib import Path, PurePosixPath

from .fsutil import link_or_copy

SPLIT_FILES = ("plates.jsonl",)


def unit_of(relpath):
    """(split prefix, stem) of a raw or converted dataset file, or None for files that are not image/label."""
    p = PurePosixPath(relpath)
    if len(p.parts) < 2:
        return None
    return (str(p.parent.parent) if len(p.parts) > 2 else "", p.stem)


def plan(previous_manifest, manifest):
    """Units to convert again (changed or new) and units removed since the previous conversion."""
    def units(m):
        out = {}
        for rel, (_size, sha) in m.items():
            u = unit_of(rel)
            if u is not None:
                out.setdefault(u, {})[rel] = sha
        return out
    old, new = units(previous_manifest), units(manifest)
    changed = {u for u, files in new.items() if old.get(u) != files}
    removed = set(old) - set(new)
    return changed, removed


def build_delta(raw_root, manifest, changed, delta_root):
    """Hard-link the files of the changed units into a tree with the dataset's own layout."""
    for rel in manifest:
        if unit_of(rel) in changed:
            dst = Path(delta_root) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(Path(raw_root) / rel, dst)
    return delta_root


def merge(previous_out, delta_out, out, changed, removed):
    """previous_out minus changed/removed units, plus delta_out; returns the number of reused image files."""
    skip = changed | removed
    reused = 0
    for dirpath, _, filenames in os.walk(previous_out):
        for name in filenames:
            src = Path(dirpath) / name
            rel = src.relative_to(previous_out).as_posix()
            if name in SPLIT_FILES or rel == "report.json":
                continue
            if unit_of(rel) in skip:
                continue
            dst = Path(out) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if PurePosixPath(rel).parent.name == "image":
                link_or_copy(src, dst)
                reused += 1
            else:
                shutil.copyfile(src, dst)  # labels are small and must not share a writable inode with the store
    if delta_out is not None:
        for dirpath, _, filenames in os.walk(delta_out):
            for name in filenames:
                src = Path(dirpath) / name
                rel = src.relative_to(delta_out).as_posix()
                if name in SPLIT_FILES or rel == "report.json":
                    continue
                dst = Path(out) / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(src, dst)
    _merge_sidecars(previous_out, delta_out, out, skip)
    return reused


def _merge_sidecars(previous_out, delta_out, out, skip):
    """plates.jsonl per split: previous records of kept units, then the delta's records."""
    for sidecar in Path(previous_out).rglob("plates.jsonl"):
        split = sidecar.parent.relative_to(previous_out).as_posix()
        split = "" if split == "." else split
        lines = [line for line in sidecar.read_text(encoding="utf-8").splitlines()
                 if line and (split, json.loads(line)["stem"]) not in skip]
        delta_file = Path(delta_out) / sidecar.relative_to(previous_out) if delta_out is not None else None
        if delta_file is not None and delta_file.exists():
            lines += [line for line in delta_file.read_text(encoding="utf-8").splitlines() if line]
        target = Path(out) / sidecar.relative_to(previous_out)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines.sort(key=lambda line: (json.loads(line)["stem"], json.loads(line)["index"]))  # the converter's order
        target.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
