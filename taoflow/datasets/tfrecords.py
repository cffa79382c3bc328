"""TFRecords for SSD exactly as TAO's `dataset_convert` writes them (TAO 5, DALI mode).

Behaviour reproduced from nvidia_tao_tf1/cv/ssd/scripts/dataset_convert.py and detectnet_v2/dataio/
{kitti_converter_lib,dataset_converter_lib}.py (see docs in ../shared/reference/tao-ssd-contract.md §2):
- images: sorted(os.listdir(root/image_dir_name)) ending with image_extension (case-sensitive); stems are frame ids
  (where no file ends with it, or it is not set, the images are detected from the data: see select_frames);
- `random` partitions: fold 0 = the first int(val_split/100 * N) sorted stems, fold 1 = the rest; the partitions are
  shuffled by `random.seed(42)`, once while partitioning and once more before sharding, in that order;
- empty partitions are skipped *before* folds are numbered, each partition is cut into num_shards contiguous shards
  (the last takes the remainder), files are named `<out>-fold-PPP-of-NNN-shard-SSSSS-of-MMMMM`;
- per object: exactly 15 fields, boxes checked with int() truncation (x1 < x2 and y1 < y2, else logged to
  `<out>_warning.json`), classes lowercased and dropped unless they are keys of target_class_mapping, coordinates
  normalised by the image size, class ids 1..N over the sorted target classes;
- image bytes are passed through untouched and an `idx-<file>` DALI index is written for every record file.

Where TAO would crash with a Python traceback (a non-numeric field, a 16-field prediction line, a missing label file)
taoflow raises a DataError naming the file and line. Unlike TAO, no index is written for the warning json, and
features are serialised in sorted key order so identical inputs give identical bytes.
"""

import errno
import json
import logging
import math
import os
import random
import shutil
import stat
import tempfile
from collections import Counter
from pathlib import Path

from ..errors import DataError, OutputExistsError, TaoflowError
from ..parallel import map_chunks
from ..spec.dataset_export import DatasetExportSpec, load_dataset_export
from ..spec.protos import tf_example_pb2 as tfx
from ..status import StatusLogger
from .images import (MAX_IMAGE_SIDE, add_max_side_argument, check_max_side, dir_prefix, duplicate_message,
                     is_image_name, read_image)
from .tfrecord_io import TFRecordWriter, format_index

log = logging.getLogger(__name__)
TAO_SEED = 42


def list_frames(images_root: Path, extension: str):
    """TAO's frame list: stems of sorted(os.listdir()) names ending with extension (case-sensitive)."""
    return [os.path.splitext(name)[0] for name in _list_names(images_root) if name.endswith(extension)]


def _list_names(images_root):
    if not images_root.is_dir():
        raise DataError(f"image directory not found: {images_root}")
    return sorted(os.listdir(images_root))


def select_frames(images_root: Path, image_extension: str):
    """The frames to convert: ([(frame id, file name)] in TAO's order, note about the extension or None).

    TAO's converter lists sorted(os.listdir()) names ending with kitti_config.image_extension (default ".png",
    case-sensitive) and silently writes no records when none match. taoflow:
    - image_extension set and some files end with it: exactly TAO's list. Images with other extensions are left
      out, as TAO leaves them, and the note says how many.
    - image_extension not set: every JPEG/PNG of the folder (.jpg .jpeg .png in any case, mixed), in TAO's
      order of sorted file names. For a PNG-only folder that is what TAO's ".png" default gives; for JPEGs or a
      mix it is what the data holds rather than nothing.
    - image_extension set but no file ends with it, while the folder holds other JPEG/PNG images (a spec written
      for ".jpg" over KITTI's PNG frames, or ".png" over ".PNG" files): those images are converted and the note,
      logged as a warning and kept in the report, names the extension found and how to silence it. Detecting
      rather than failing, because the extension only selects files: no file matches the spec's, so there is one
      reading of the folder, the records hold exactly the Examples TAO writes with the corrected spec
      (frame ids carry no extension), and a spec set reused across CRPD (.jpg) and KITTI (.png) keeps working.
      TAO itself would write no records here, so taoflow's TFRecords must be used (the train-ssd flow does so for
      both backends); the note says it.
    A folder with no JPEG/PNG at all is an error that says what was looked for.
    """
    names = _list_names(images_root)
    if image_extension:
        matched = [name for name in names if name.endswith(image_extension)]
        if matched:
            others = [name for name in _image_names(names) if not name.endswith(image_extension)]
            note = None
            if others:
                note = (f"image_extension {image_extension!r}: {len(others)} image(s) in {images_root} with other "
                        f"extensions ({_extension_counts(others)}) are not converted, as TAO leaves them; remove "
                        f"image_extension from the spec to convert every image")
            return [(os.path.splitext(name)[0], name) for name in matched], note
    found = _image_names(names)
    if not found:
        wanted = f"names ending with {image_extension!r} (image_extension) or any " if image_extension else ""
        raise DataError(f"no images in {images_root}: looked for {wanted}.jpg/.jpeg/.png files in any case")
    stems = {}
    for name in found:
        stems.setdefault(os.path.splitext(name)[0], []).append(name)
    for stem, same in stems.items():
        if len(same) > 1:
            raise DataError(duplicate_message(stem, same) + "; or set image_extension to pick one",
                            path=images_root / same[0])
    note = None
    if image_extension:
        note = (f"image_extension {image_extension!r} matches no file in {images_root}; converting the "
                f"{len(found)} images found there instead ({_extension_counts(found)}). Set image_extension: "
                f"\"{_main_extension(found)}\" in the spec (or remove it) to silence this; TAO's own dataset_convert "
                f"would write no records with this spec")
    return [(os.path.splitext(name)[0], name) for name in found], note


def _image_names(names):
    # Dot files are not frames: macOS leaves AppleDouble "._name.png" files next to images.
    return [name for name in names if not name.startswith(".") and is_image_name(name)]


def _extension_counts(names):
    counts = Counter(os.path.splitext(name)[1] for name in names)
    return ", ".join(f"{n} {ext}" for ext, n in sorted(counts.items()))


def _main_extension(names):
    counts = Counter(os.path.splitext(name)[1] for name in names)
    return max(sorted(counts), key=lambda ext: counts[ext])


def partition_frames(spec: DatasetExportSpec, frames):
    """TAO's partitions (lists of frame ids, fold order) including its seeded shuffles."""
    k = spec.kitti
    rng = random.Random(TAO_SEED)  # TAO seeds the global RNG in the converter's constructor; same sequence.
    if k.partition_mode == "random":
        num_val = int(k.val_split / 100.0 * len(frames))
        partitions = [frames[:num_val], frames[num_val:]]
        for part in partitions:
            rng.shuffle(part)
    else:
        partitions = _sequence_partitions(spec, set(frames))
    for part in partitions:
        rng.shuffle(part)
    return partitions


def _sequence_partitions(spec, available):
    path = spec.root_dir() / spec.kitti.kitti_sequence_to_frames_file
    try:
        seq_map = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the sequence-to-frames file: {e}", path=path) from None
    n = spec.kitti.num_partitions
    if n <= 1:
        return [[f for frames in seq_map.values() for f in frames]]
    partitions = [[] for _ in range(n)]
    ordered = sorted(seq_map.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    for i, (_, frame_ids) in enumerate(ordered):
        partitions[i % n].extend(frame_ids)
    missing = [f for part in partitions for f in part if f not in available]
    if missing:
        raise DataError(f"{len(missing)} frames of the sequence file have no image, e.g. {missing[0]!r}", path=path)
    return partitions[::-1]  # TAO reverses so that fold 0 holds the last sequences (Rumpy's validation buckets)


def shard_partitions(partitions, num_shards):
    """TAO's _shard: empty partitions are dropped, the rest cut into contiguous shards."""
    n = max(num_shards, 1)
    out = []
    for part in partitions:
        if not part:
            continue
        size = len(part) // n
        out.append([part[i * size:(i + 1) * size if i + 1 < n else len(part)] for i in range(n)])
    return out


def shard_name(output, p, num_partitions, s, num_shards):
    name = str(output)
    if num_partitions != 0:
        name = f"{name}-fold-{p:03d}-of-{num_partitions:03d}"
    if num_shards != 0:
        name = f"{name}-shard-{s:05d}-of-{num_shards:05d}"
    return name


def _parse_label_file(label_path):
    """Label rows as TAO reads them: [class bytes, 14 floats], with errors that say where."""
    if not _is_file(label_path):
        raise DataError("label file missing for this image (TAO needs one label file per image)", path=label_path)
    with open(label_path, "rb") as f:
        data = f.read()
    try:
        # bytes.decode, not a text-mode read: no newline translation is needed, because splitlines() below
        # already treats \r\n and \r as line ends, so the lines are the same.
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError("label file is not valid UTF-8", path=label_path, line=line) from None
    rows = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 15:
            hint = " (a 16th field is a prediction score: remove it)" if len(fields) == 16 else ""
            raise DataError(f"KITTI label line has {len(fields)} fields, dataset_convert needs exactly 15{hint}",
                            path=label_path, line=lineno)
        try:
            values = [float(x) for x in fields[1:]]
        except ValueError:
            bad = next(x for x in fields[1:] if not _is_float(x))
            raise DataError(f"field {bad!r} is not a number", path=label_path, line=lineno) from None
        if not all(map(math.isfinite, values)):
            raise DataError("label line has a NaN or infinite number", path=label_path, line=lineno)
        rows.append([fields[0].encode("utf-8")] + values)
    return rows


def _is_file(path):
    """Path(path).is_file() without building a Path: False where the file is missing, other stat errors raise."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise
    except ValueError:
        return False


def _is_float(x):
    try:
        float(x)
        return True
    except ValueError:
        return False


# Float features copied from one label column each (a row is [class, 14 floats]); the class id and the normalised
# box corners are computed in _example.
_FLOAT_COLUMNS = (
    ("target/truncation", 1), ("target/observation_angle", 3), ("target/world_bbox_h", 8),
    ("target/world_bbox_w", 9), ("target/world_bbox_l", 10), ("target/world_bbox_x", 11),
    ("target/world_bbox_y", 12), ("target/world_bbox_z", 13), ("target/world_bbox_rot_y", 14),
)
_ENCODED_KEY = b"frame/encoded"


def _example(frame_id, image_dir_name, encoded, width, height, rows, class2idx, label_path, warnings, counts):
    """The serialised tf.train.Example of one frame, as parts to concatenate: (head, encoded, tail).

    Objects written and dropped are counted into counts, rejected boxes go into warnings.

    The bytes are exactly ex.SerializeToString(deterministic=True) of the Example with all features; see
    _encoded_head for why the image is not put into the message.
    """
    kept, class_ids = [], []
    for row in rows:
        x1, y1, x2, y2 = (int(v) for v in row[4:8])
        if not (x1 < x2 and y1 < y2):
            # TAO keys the warning by the index of the first identical row (list.index), so duplicates collapse.
            warnings[f"{label_path}_{rows.index(row)}"] = [x1, y1, x2, y2]
            continue
        name = row[0].lower().decode("utf-8")
        if name not in class2idx:
            counts[("dropped", name)] += 1
            continue
        counts[("written", name)] += 1
        kept.append(row)
        class_ids.append(float(class2idx[name]))
    cols = list(zip(*kept)) if kept else [()] * 15  # cols[i]: field i of every kept object

    feats = tfx.Features()
    f = feats.feature
    f["frame/id"].bytes_list.value.append(os.path.join(image_dir_name, frame_id).encode("utf-8"))
    f["frame/height"].int64_list.value.append(height)
    f["frame/width"].int64_list.value.append(width)
    floats = [("target/object_class_id", class_ids),
              ("target/coordinates_x1", [v / width for v in cols[4]]),
              ("target/coordinates_y1", [v / height for v in cols[5]]),
              ("target/coordinates_x2", [v / width for v in cols[6]]),
              ("target/coordinates_y2", [v / height for v in cols[7]])]
    floats += [(key, cols[i]) for key, i in _FLOAT_COLUMNS]
    for key, values in floats:
        f[key].float_list.SetInParent()  # TAO writes every key, with an empty list for frames without objects
        f[key].float_list.value.extend(values)
    f["target/occlusion"].int64_list.SetInParent()
    f["target/occlusion"].int64_list.value.extend([int(v) for v in cols[2]])
    tail = feats.SerializeToString(deterministic=True)
    return _encoded_head(len(encoded), len(tail)), encoded, tail


def _encoded_head(image_len, tail_len):
    """Protobuf wire bytes that precede the image in a serialised Example whose other features serialise to tail.

    Putting a whole image into the message and serialising it costs two extra copies of every image, the largest
    cost of this stage after the disk. So only the other features go through protobuf; the frame/encoded entry is
    framed here, which is exact because a deterministic serialisation writes map entries sorted by key and
    "frame/encoded" sorts before every other key: the Example is
      Example.features(1) { Features.feature(1) map entry { key(1) "frame/encoded", value(2) Feature {
        bytes_list(1) BytesList { value(1) <image> } } }, <the other entries = tail> }
    and each nested message is a length-delimited field: tag byte (field << 3 | 2), varint length, payload.
    """
    bytes_list = image_len + _delimited_len(image_len)
    feature = bytes_list + _delimited_len(bytes_list)
    entry = len(_ENCODED_KEY) + _delimited_len(len(_ENCODED_KEY)) + feature + _delimited_len(feature)
    features = entry + _delimited_len(entry) + tail_len
    return b"".join((
        b"\x0a", _varint(features),  # Example.features
        b"\x0a", _varint(entry),  # Features.feature map entry
        b"\x0a", _varint(len(_ENCODED_KEY)), _ENCODED_KEY,  # key
        b"\x12", _varint(feature),  # value: Feature
        b"\x0a", _varint(bytes_list),  # Feature.bytes_list
        b"\x0a", _varint(image_len),  # BytesList.value[0], followed by the image itself
    ))


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited_len(n):
    """Bytes a length-delimited field adds around an n-byte payload: its one-byte tag and the varint length."""
    return 1 + len(_varint(n))


def _write_shards(jobs):
    return [_write_shard(job) for job in jobs]


def _write_shard(job):
    # Paths are spelt from the directory prefixes as str(Path(dir) / name) would: the warning json keys and error
    # messages contain them.
    image_prefix, label_prefix = job["image_prefix"], job["label_prefix"]
    counts, warnings = Counter(), {}
    with TFRecordWriter(job["path"]) as writer:
        for frame_id, file_name in job["frames"]:
            image_path = image_prefix + file_name
            label_path = f"{label_prefix}{frame_id}.txt"
            encoded, (width, height) = read_image(image_path, job["max_side"])
            rows = _parse_label_file(label_path)
            writer.write_parts(_example(frame_id, job["image_dir_name"], encoded, width, height, rows,
                                        job["class2idx"], label_path, warnings, counts))
    with open(job["index_path"], "w") as f:
        f.write(format_index(writer.index))
    return {"partition": job["partition"], "file": os.path.basename(job["final"]), "records": len(writer.index),
            "counts": counts, "warnings": warnings}


def dataset_convert(spec, output_filename, class_names_file=None, workers=1, progress=True, results_dir=None,
                    replace=False, max_side=MAX_IMAGE_SIDE):
    """Write TAO-layout TFRecords for the KITTI dataset a dataset_convert spec describes; return a report dict.

    The spec, the class names, the dataset's folders and the output prefix are validated before anything is
    created (status.json included). Records are written into a temporary directory next to the output, then each file
    is moved into place, and only then are older files of the same prefix that the new run does not write removed:
    a reader never sees the prefix without records. An image whose header claims more than max_side pixels a side
    fails the step, naming the file, as a truncated one does.
    """
    check_max_side(max_side)
    if not isinstance(spec, DatasetExportSpec):
        spec = load_dataset_export(spec, require_mapping=class_names_file is None)
    plan = _plan(spec, output_filename, class_names_file, replace)
    status = StatusLogger(results_dir)
    status.write("Starting Object Detection Dataset Convert.", status="STARTED")
    try:
        report = _convert(spec, plan, workers, progress, max_side)
    except TaoflowError as e:
        status.write(str(e), status="FAILURE")
        raise
    status.write("TFRecords generation complete.", status="SUCCESS", kpi={"num_images": report["num_images"]},
                 categorical={"num_objects": report["objects"]})
    return report


def _class_ids(spec, class_names_file):
    if spec.raw.target_class_mapping:
        return spec.class_ids()
    path = Path(class_names_file)
    if not path.is_file():
        raise DataError(f"class names file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the class names file: {e}", path=path) from None
    classes = sorted({line.strip().lower() for line in text.splitlines() if line.strip()})
    if not classes:
        raise DataError("class names file is empty", path=path)
    return classes, {c: i + 1 for i, c in enumerate(classes)}


def _check_prefix(output_filename):
    """The -o prefix as a Path; TaoflowError when it names a directory (TAO's -o is a file name prefix)."""
    text = os.fspath(output_filename)
    output = Path(text)
    if not text or output.name in ("", ".", "..") or text.endswith(("/", os.sep)) or output.is_dir():
        example = output / "crpd_train" if output.name not in ("", ".", "..") else Path("out") / "crpd_train"
        raise TaoflowError(f"-o {text} is a directory; -o is the TFRecord file prefix (e.g. {example})")
    return output


def _plan(spec, output_filename, class_names_file, replace):
    """Everything _convert needs, validated without creating or changing any file."""
    output = _check_prefix(output_filename)
    k = spec.kitti
    classes, class2idx = _class_ids(spec, class_names_file)
    root = spec.root_dir()
    images_root, labels_root = root / k.image_dir_name, root / k.label_dir_name
    selected, extension_note = select_frames(images_root, k.image_extension)
    if not labels_root.is_dir():
        raise DataError(f"label directory not found: {labels_root}")
    out_dir = output.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise TaoflowError(f"-o {output}: {out_dir} is not a directory")
    if out_dir.resolve() in (images_root.resolve(), labels_root.resolve()):
        raise TaoflowError(f"output {output} is inside the dataset's image or label directory; write it elsewhere")
    existing = _existing_outputs(output)
    if existing and not replace:
        raise OutputExistsError(f"TFRecords already exist for prefix {output} (e.g. {existing[0].name}); "
                                "pass --replace to overwrite them")
    frames = [frame for frame, _ in selected]
    partitions = partition_frames(spec, frames)  # reads the sequence file, when there is one
    sharded = shard_partitions(partitions, k.num_shards)
    return {"output": output, "classes": classes, "class2idx": class2idx, "images_root": images_root,
            "labels_root": labels_root, "selected": selected, "extension_note": extension_note,
            "partitions": partitions, "sharded": sharded}


def _convert(spec, plan, workers, progress, max_side):
    k = spec.kitti
    output, images_root, labels_root = plan["output"], plan["images_root"], plan["labels_root"]
    if plan["extension_note"]:
        log.warning("%s", plan["extension_note"])
    file_names = dict(plan["selected"])
    out_dir = output.parent
    created = _make_dirs(out_dir)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=out_dir))
        jobs = []
        for p, shards in enumerate(plan["sharded"]):
            for s, shard in enumerate(shards):
                final = Path(shard_name(output, p, k.num_partitions, s, k.num_shards))
                jobs.append({"partition": p, "frames": [(frame, file_names[frame]) for frame in shard],
                             "final": str(final), "path": str(tmp / final.name),
                             "index_path": str(tmp / f"idx-{final.name}"), "image_prefix": dir_prefix(images_root),
                             "label_prefix": dir_prefix(labels_root), "image_dir_name": k.image_dir_name,
                             "class2idx": plan["class2idx"], "max_side": max_side})
        # One task per shard, handed out as workers free up: a worker that runs slower (a busy core) then writes
        # fewer shards instead of holding up the whole step with a fixed half of them.
        results = map_chunks(_write_shards, jobs, workers=workers, desc="tfrecords", progress=progress,
                             chunks_per_worker=len(jobs), unit="shard")
        warnings = {}
        for r in results:
            warnings.update(r["warnings"])
        if warnings:
            (tmp / f"{output.name}_warning.json").write_text(json.dumps(warnings, indent=2))
        _publish(tmp, output)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):  # directories this run created, deepest first, when still empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    report = _report(output, plan["partitions"], results, plan["classes"], plan["class2idx"], warnings)
    report["image_extensions"] = _extension_counts_dict(plan["selected"])
    report["image_extension_note"] = plan["extension_note"]
    return report


def _make_dirs(directory):
    """mkdir -p; return the directories it created, outermost first."""
    missing = []
    d = Path(directory)
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    missing.reverse()
    for d in missing:
        try:
            d.mkdir()
        except FileExistsError:
            pass
    return missing


def _publish(tmp, output):
    """Move the new files into place one by one (os.replace: a reader sees the old file or the new one), then remove
    the older outputs of the prefix that the new run did not write (a shard or fold count that changed, a warning
    file from an earlier run). Files that are not outputs of this prefix are never touched."""
    out_dir = output.parent
    new = sorted(f.name for f in tmp.iterdir())
    old = _existing_outputs(output)
    for name in new:
        os.replace(tmp / name, out_dir / name)
    for path in old:
        if path.name not in new:
            path.unlink(missing_ok=True)


def _extension_counts_dict(selected):
    return dict(sorted(Counter(os.path.splitext(name)[1] for _, name in selected).items()))


def _existing_outputs(output):
    """Regular files in output's directory that this prefix writes (records, idx- files, the warning json)."""
    names = (f"{output.name}-", f"idx-{output.name}-", f"{output.name}_warning.json")
    try:
        entries = list(os.scandir(output.parent))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise TaoflowError(f"cannot list the output directory {output.parent}: {e.strerror or e}") from None
    return sorted(Path(e.path) for e in entries
                  if (e.name.startswith(names) or e.name == output.name) and e.is_file(follow_symlinks=False))


def _report(output, partitions, results, classes, class2idx, warnings):
    per_partition = {}
    objects, dropped = Counter(), Counter()
    for r in results:
        part = per_partition.setdefault(r["partition"], {"records": 0, "objects": Counter(), "files": []})
        part["records"] += r["records"]
        part["files"].append(r["file"])
        for (kind, name), n in r["counts"].items():
            if kind == "written":
                part["objects"][name] += n
                objects[name] += n
            else:
                dropped[name] += n
    return {
        "output": str(output),
        "num_images": sum(len(p) for p in partitions),
        "num_val_images": len(partitions[0]) if len(partitions) == 2 else None,
        "classes": classes,
        "class_ids": class2idx,
        "partitions": {p: {"records": v["records"], "objects": dict(v["objects"]), "files": v["files"]}
                       for p, v in sorted(per_partition.items())},
        "objects": dict(objects),
        "dropped_unmapped_objects": dict(dropped),
        "invalid_boxes": len(warnings),
        "warning_file": f"{output}_warning.json" if warnings else None,
    }


def add_cli_arguments(parser):
    """TAO's `dataset_convert` flags (-d -o -f -v -r -c) plus taoflow's -j/--replace/--no-progress."""
    parser.add_argument("-d", "--dataset_export_spec", required=True, help="dataset_convert spec file (protobuf text)")
    parser.add_argument("-o", "--output_filename", required=True, help="output path prefix of the TFRecord files")
    parser.add_argument("-f", "--validation_fold", type=int, default=None,
                        help="accepted for TAO compatibility; only TAO's sample modifier uses it")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-r", "--results_dir", default=None, help="directory for status.json")
    parser.add_argument("-c", "--class_names_file", default=None,
                        help="class names, one per line; used only when target_class_mapping is empty")
    add_max_side_argument(parser)
    parser.add_argument("-j", "--workers", type=int, default=1, help="parallel processes (shards are the unit)")
    parser.add_argument("--replace", action="store_true", help="overwrite TFRecords already written with this prefix")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args):
    report = dataset_convert(args.dataset_export_spec, args.output_filename, class_names_file=args.class_names_file,
                             workers=args.workers, progress=not args.no_progress, results_dir=args.results_dir,
                             replace=args.replace, max_side=args.max_image_side)
    print(summary(report))
    return 0


def summary(report):
    lines = [f"Wrote {report['num_images']} images to {report['output']}-* "
             f"({sum(len(p['files']) for p in report['partitions'].values())} record files, each with an idx- index)"]
    for p, part in report["partitions"].items():
        objs = ", ".join(f"{k}: {v}" for k, v in sorted(part["objects"].items())) or "no objects"
        lines.append(f"  fold {p:03d}: {part['records']} images; {objs}")
    lines.append("  class ids: " + ", ".join(f"{c}={i + 1}" for i, c in enumerate(report["classes"])))
    if report["dropped_unmapped_objects"]:
        lines.append("  dropped (class not in target_class_mapping): " +
                     ", ".join(f"{k}: {v}" for k, v in sorted(report["dropped_unmapped_objects"].items())))
    if report.get("image_extension_note"):
        lines.append(f"  note: {report['image_extension_note']}")
    if report["invalid_boxes"]:
        lines.append(f"  {report['invalid_boxes']} boxes failed TAO's x1<x2, y1<y2 check: see {report['warning_file']}")
    return "\n".join(lines)
