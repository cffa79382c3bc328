"""taoflow.pipeline without Prefect and without training: run_stage's caching and atomicity, the model stages
(train, evaluate, prune, export) driven by an executor that writes TAO's results layout on disk, their cache keys,
the passport chain and the validation of extra_datasets."""

import csv
import json
import math
from pathlib import Path

import pytest

from taoflow import pipeline as P
from taoflow.contract.results import EvaluateResult, ExportResult, InferenceResult, PruneResult, train_result
from taoflow.errors import TaoflowError
from taoflow.spec import load_experiment
from taoflow.store import Store

REPO = Path(__file__).resolve().parents[1]
DEMO_SPECS = REPO / "specs" / "demo"
ARCH = "resnet10"  # the demo specs' network: TAO names its files ssd_resnet10_*
CSV_COLUMNS = ("epoch", "AP_lpd", "loss", "lr", "mAP", "validation_loss")  # TAO's CSVLogger: epoch + sorted keys


class DiskExecutor:
    """The executor protocol (taoflow.contract.executor) for real on disk, without a network: each step writes the
    files TAO's `ssd` task writes (weights/ssd_<arch>_epoch_NNN.pth every checkpoint_interval epochs, the training
    CSV with empty cells on epochs without validation, status.json as JSON lines; pruned model, ONNX + model.json)
    and returns the typed results. Checkpoints are small JSON files saying where they came from, so a test can see
    what a step was given. Every call is recorded in `calls`."""

    name = "disk"

    def __init__(self, versions=None, fail_after_epoch=None, export_format="onnx"):
        self.versions = dict(versions or {})
        self.fail_after_epoch = fail_after_epoch  # raise once this epoch is written, as a killed run stops
        self.export_format = export_format
        self.calls = []

    def code_version(self, step):
        return self.versions.get(step, "code-1")

    def train(self, spec_path, results_dir, resume_model=None, initial_epoch=1):
        self.calls.append({"step": "train", "spec": Path(spec_path), "results_dir": Path(results_dir),
                           "resume_model": resume_model, "initial_epoch": initial_epoch})
        spec = load_experiment(spec_path, task="train").effective
        epochs = spec.training_config.num_epochs
        interval = spec.training_config.checkpoint_interval
        period = spec.eval_config.validation_period_during_training
        results_dir = Path(results_dir)
        (results_dir / "weights").mkdir(parents=True, exist_ok=True)
        log_file = results_dir / f"ssd_training_log_{ARCH}.csv"
        fresh = initial_epoch == 1 or not log_file.is_file()
        with open(log_file, "w" if fresh else "a", newline="") as f:
            writer = csv.writer(f)
            if fresh:
                writer.writerow(CSV_COLUMNS)
            for epoch in range(initial_epoch, epochs + 1):
                validated = epoch % period == 0
                ap = f"{epoch / (epochs + 1):.4f}" if validated else ""
                writer.writerow([epoch, ap, f"{1.0 / epoch:.4f}", "0.005", ap, "0.5" if validated else ""])
                f.flush()
                if epoch % interval == 0:
                    (results_dir / "weights" / f"ssd_{ARCH}_epoch_{epoch:03d}.pth").write_text(json.dumps(
                        {"epoch": epoch, "start": str(resume_model) if resume_model else None}))
                with open(results_dir / "status.json", "a") as status:
                    status.write(json.dumps({"status": "RUNNING", "epoch": epoch, "max_epoch": epochs}) + "\n")
                if epoch == self.fail_after_epoch:
                    raise RuntimeError(f"killed after epoch {epoch}")
        return train_result(results_dir)

    def evaluate(self, spec_path, model_path, out_dir):
        self.calls.append({"step": "evaluate", "spec": Path(spec_path), "model": Path(model_path)})
        classes = load_experiment(spec_path, task="evaluate").classes
        epoch = json.loads(Path(model_path).read_text())["epoch"]
        ap = {c: round(epoch / 10, 4) for c in classes}
        return EvaluateResult(ap=ap, map=sum(ap.values()) / len(ap))

    def prune(self, model_path, output, threshold, criterion):
        self.calls.append({"step": "prune", "model": Path(model_path), "threshold": threshold,
                           "criterion": criterion})
        pruned = Path(output).parent / f"{Path(model_path).stem}_pruned.pth"  # the backend names the file
        pruned.write_text(json.dumps({"epoch": 0, "start": str(model_path), "threshold": threshold}))
        return PruneResult(output=pruned, ratio=round(1 - threshold, 4), param_count=1000)

    def export(self, spec_path, model_path, output, precision):
        self.calls.append({"step": "export", "spec": Path(spec_path), "model": Path(model_path),
                           "precision": precision})
        out_dir = Path(output).parent
        model = out_dir / ("model.etlt" if self.export_format == "etlt" else "model.onnx")
        model.write_bytes(b"model of " + Path(model_path).name.encode())
        model_json = out_dir / "model.json"
        model_json.write_text(json.dumps({"precision": precision}))
        labels = out_dir / "labels.txt"
        labels.write_text("\n".join(load_experiment(spec_path, task="export").classes) + "\n")
        return ExportResult(model_file=model, model_json=model_json, labels=labels,
                            files={self.export_format: model, "model_json": model_json, "labels": labels})

    def model_stats(self, model_path):
        return {"params": None, "gflops": None, "cpu_latency_ms": None}  # as for a TAO model the host cannot load

    def reference_outputs(self, spec_path, model_path, image_paths):
        return "the disk executor has no network to run"

    def infer(self, spec_path, model_path, image_dir, results_dir, threshold=0.3):
        labels, images = Path(results_dir) / "labels", Path(results_dir) / "images_annotated"
        labels.mkdir(parents=True, exist_ok=True)
        images.mkdir(parents=True, exist_ok=True)
        for image in sorted(Path(image_dir).iterdir()):
            (labels / f"{image.stem}.txt").write_text("")  # no detection
            (images / image.name).write_bytes(image.read_bytes())
        return InferenceResult(labels_dir=labels, images_dir=images)


def demo_spec(path, name="ssd_train_resnet10_demo_cpu.txt", replace=()):
    """A copy of a demo spec with its text changed by `replace` ((old, new) pairs, each found exactly once)."""
    text = (DEMO_SPECS / name).read_text()
    for old, new in replace:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# 3 epochs, a checkpoint every epoch, validation every second epoch: epoch 2 of 3 can be resumed from, and the
# training CSV has empty cells on epochs 1 and 3
SHORT = (("num_epochs: 5", "num_epochs: 3"), ("checkpoint_interval: 5", "checkpoint_interval: 1"),
         ("validation_period_during_training: 5", "validation_period_during_training: 2"))
RETRAIN_SHORT = (("checkpoint_interval: 3", "checkpoint_interval: 1"),)


class Run:
    """A workspace with a store, a config whose train/retrain specs are short copies of the demo's, and committed
    upstream stages (split, tfrecords) for the model stages to chain from."""

    def __init__(self, root):
        self.root = root
        self.cfg = P.RunConfig(workspace=str(root / "ws"), workers=1,
                               train_spec=str(demo_spec(root / "specs" / "train.txt", replace=SHORT)),
                               retrain_spec=str(demo_spec(root / "specs" / "retrain.txt",
                                                          "ssd_retrain_resnet10_demo_cpu.txt", RETRAIN_SHORT)))
        self.store = Store(self.cfg.workspace)
        self.split = P.run_stage(self.store, "split", {"dataset": "split fixture"}, lambda tmp, key: {})
        self.tfrecords = P.run_stage(self.store, "tfrecords", {"dataset": "tfrecords fixture"}, lambda tmp, key: {})

    def train(self, executor, **kw):
        return P.stage_train(self.store, self.cfg, self.tfrecords, self.split, executor, **kw)

    def temp_dirs(self, stage):
        return sorted((self.store.root / stage).glob(".tmp-*"))


@pytest.fixture
def run(tmp_path):
    return Run(tmp_path)


# -- run_stage ---------------------------------------------------------------------------------------------------------
def test_same_material_is_produced_once_and_then_returned_cached(tmp_path):
    store, produced = Store(tmp_path / "ws"), []

    def produce(tmp, key):
        produced.append(key)
        (tmp / "out.txt").write_text("output")
        return {"rows": 3}
    first = P.run_stage(store, "demo", {"input": "a", "n": 1}, produce)
    second = P.run_stage(store, "demo", {"n": 1, "input": "a"}, produce)  # same material, other key order
    assert produced == [first.key]
    assert (first.cached, second.cached) == (False, True)
    assert (second.key, second.path) == (first.key, first.path)
    assert Path(second.path, "out.txt").read_text() == "output"
    assert second.meta["rows"] == 3 and second.meta["material"] == {"input": "a", "n": 1}
    assert store.has("demo", first.key) and store.check() == []


def test_a_failing_produce_commits_nothing_and_leaves_no_temp_dir(tmp_path):
    store, seen = Store(tmp_path / "ws"), []

    def broken(tmp, key):
        seen.append(tmp)
        (tmp / "half-written.txt").write_text("partial")
        raise ValueError("produce failed")
    with pytest.raises(ValueError, match="produce failed"):
        P.run_stage(store, "demo", {"input": "a"}, broken)
    assert seen and not seen[0].exists()
    assert [p.name for p in (store.root / "demo").iterdir() if not p.name.startswith(".lock-")] == []
    # the key is free: the next attempt computes it
    result = P.run_stage(store, "demo", {"input": "a"}, lambda tmp, key: {"ok": True})
    assert not result.cached and result.meta["ok"] is True


def test_different_material_gives_a_different_key_and_directory(tmp_path):
    store = Store(tmp_path / "ws")
    a = P.run_stage(store, "demo", {"input": "a"}, lambda tmp, key: {})
    b = P.run_stage(store, "demo", {"input": "b"}, lambda tmp, key: {})
    assert a.key != b.key and a.path != b.path and not b.cached
    assert store.has("demo", a.key) and store.has("demo", b.key)


# -- train -------------------------------------------------------------------------------------------------------------
def test_train_meta_names_the_last_checkpoint_the_log_and_unmeasured_epochs_as_nan(run):
    executor = DiskExecutor()
    trained = run.train(executor)
    [call] = executor.calls
    assert (call["resume_model"], call["initial_epoch"]) == (None, 1)
    assert trained.meta["checkpoint"] == f"results/weights/ssd_{ARCH}_epoch_003.pth"
    assert P.checkpoint_of(trained).is_file()
    assert trained.meta["training_log"] == f"results/ssd_training_log_{ARCH}.csv"
    assert Path(trained.path, trained.meta["training_log"]).is_file()
    assert trained.meta["resumed_from_epoch"] is None
    history = trained.meta["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert math.isnan(history[0]["mAP"]) and math.isnan(history[2]["mAP"]) and history[1]["mAP"] > 0
    assert math.isnan(history[0]["validation_loss"]) and history[1]["validation_loss"] == 0.5
    # the run's spec reads this run's records and split, wherever the original spec pointed
    spec = load_experiment(Path(trained.path) / "experiment_spec.txt", task="train").raw
    assert spec.dataset_config.data_sources[0].tfrecords_path.startswith(run.tfrecords.path)
    assert spec.dataset_config.validation_data_sources[0].image_directory_path == str(
        Path(run.split.path) / "out" / "val" / "image")
    assert not list((run.store.root / "train").glob(".work-*")) and run.temp_dirs("train") == []


def test_an_interrupted_training_resumes_from_its_last_checkpoint(run):
    with pytest.raises(RuntimeError, match="killed after epoch 2"):
        run.train(DiskExecutor(fail_after_epoch=2))
    [work] = (run.store.root / "train").glob(".work-*")  # kept for the next attempt; the temp dir is not
    assert run.temp_dirs("train") == []
    executor = DiskExecutor()
    trained = run.train(executor)
    [call] = executor.calls
    assert call["initial_epoch"] == 3
    assert call["resume_model"] == work / "results" / "weights" / f"ssd_{ARCH}_epoch_002.pth"
    assert trained.meta["resumed_from_epoch"] == 3 and work.name == f".work-{trained.key}"
    assert [row["epoch"] for row in trained.meta["history"]] == [1, 2, 3]  # the earlier epochs' rows are kept
    assert json.loads(P.checkpoint_of(trained).read_text()) == {"epoch": 3, "start": str(call["resume_model"])}
    assert not work.exists()


def test_an_attempt_killed_after_its_last_epoch_is_committed_without_training_again(run):
    with pytest.raises(RuntimeError, match="killed after epoch 3"):
        run.train(DiskExecutor(fail_after_epoch=3))
    executor = DiskExecutor()
    trained = run.train(executor)
    assert executor.calls == []
    assert P.checkpoint_of(trained).name == f"ssd_{ARCH}_epoch_003.pth"
    assert [row["epoch"] for row in trained.meta["history"]] == [1, 2, 3]


def test_training_that_writes_no_checkpoint_fails_naming_its_results_dir(run):
    class NoWeights(DiskExecutor):
        def train(self, spec_path, results_dir, resume_model=None, initial_epoch=1):
            Path(results_dir).mkdir(parents=True, exist_ok=True)
            return train_result(results_dir)
    with pytest.raises(TaoflowError, match=r"train wrote no checkpoint or no training log in .*results"):
        run.train(NoWeights())
    assert run.temp_dirs("train") == []


def test_train_key_follows_the_train_code_and_the_spec_text_but_not_spec_paths(run):
    base = run.train(DiskExecutor())
    assert run.train(DiskExecutor()).cached
    # another step's code does not touch train's key; train's own code does
    assert run.train(DiskExecutor(versions={"evaluate": "code-2"})).key == base.key
    assert run.train(DiskExecutor(versions={"train": "code-2"})).key != base.key
    # the same spec elsewhere, pointing at other data: paths are rewritten per run, so the key stays
    moved = demo_spec(run.root / "elsewhere" / "train.txt", replace=SHORT + (
        ("crpd/tfrecords/crpd_train", "other/records/train"), ("crpd/split/val/image", "other/val/images")))
    run.cfg.train_spec = str(moved)
    executor = DiskExecutor()
    same = run.train(executor)
    assert same.key == base.key and same.cached and executor.calls == []
    # a changed setting is another model
    run.cfg.train_spec = str(demo_spec(run.root / "bigger" / "train.txt", replace=SHORT + (
        ("batch_size_per_gpu: 4", "batch_size_per_gpu: 8"),)))
    assert run.train(DiskExecutor()).key != base.key


# -- evaluate, prune, retrain, export ----------------------------------------------------------------------------------
def test_evaluate_keeps_the_metrics_of_the_trained_checkpoint(run):
    trained = run.train(DiskExecutor())
    executor = DiskExecutor()
    evaluated = P.stage_evaluate(run.store, run.cfg, trained, executor)
    [call] = executor.calls
    assert call["model"] == P.checkpoint_of(trained)
    assert call["spec"] == Path(trained.path) / "experiment_spec.txt"
    assert evaluated.meta["metrics"] == {"AP_lpd": 0.3, "mAP": 0.3}  # the demo's class, at epoch 3
    assert json.loads(Path(evaluated.path, "metrics.json").read_text()) == evaluated.meta["metrics"]
    assert P.stage_evaluate(run.store, run.cfg, trained, DiskExecutor()).cached
    assert P.stage_evaluate(run.store, run.cfg, trained, DiskExecutor(versions={"evaluate": "code-2"})).key \
        != evaluated.key


def test_prune_meta_names_the_file_the_backend_wrote_and_retrain_starts_from_it(run):
    trained = run.train(DiskExecutor())
    executor = DiskExecutor()
    pruned = P.stage_prune(run.store, run.cfg, trained, executor)
    [call] = executor.calls
    assert (call["model"], call["threshold"], call["criterion"]) == (P.checkpoint_of(trained), 0.1, "intersection")
    assert pruned.meta["prune"] == {"model": f"ssd_{ARCH}_epoch_003_pruned.pth", "ratio": 0.9, "param_count": 1000}
    assert P.pruned_model_of(pruned).is_file()
    run.cfg.prune_threshold = 0.3
    assert P.stage_prune(run.store, run.cfg, trained, DiskExecutor()).key != pruned.key

    retrain_executor = DiskExecutor()
    retrained = run.train(retrain_executor, name="retrain", pruned=pruned)
    [call] = retrain_executor.calls
    assert (call["resume_model"], call["initial_epoch"]) == (P.pruned_model_of(pruned), 1)
    assert Path(retrained.path).parent.name == "retrain" and retrained.key != trained.key
    assert json.loads(P.checkpoint_of(retrained).read_text())["start"] == str(P.pruned_model_of(pruned))
    assert [row["epoch"] for row in retrained.meta["history"]] == [1, 2, 3]  # the retrain spec's 3 epochs


def test_export_files_are_relative_to_the_output_and_the_format_is_part_of_the_key(run):
    trained = run.train(DiskExecutor())
    executor = DiskExecutor()
    exported = P.stage_export(run.store, run.cfg, trained, executor)
    assert executor.calls[0]["precision"] == "fp16" and executor.calls[0]["model"] == P.checkpoint_of(trained)
    assert exported.meta["files"] == {"onnx": "model.onnx", "model_json": "model.json", "labels": "labels.txt"}
    assert P.exported_model_of(exported) == Path(exported.path) / "model.onnx"
    assert P.exported_model_of(exported).is_file()
    assert Path(exported.path, "labels.txt").read_text() == "lpd\n"

    etlt = P.stage_export(run.store, run.cfg, trained, DiskExecutor(export_format="etlt"))
    assert etlt.key != exported.key and P.exported_model_of(etlt) == Path(etlt.path) / "model.etlt"
    assert P.stage_export(run.store, run.cfg, trained, DiskExecutor(versions={"export": "code-2"})).key \
        != exported.key
    run.cfg.export_precision = "fp32"
    assert P.stage_export(run.store, run.cfg, trained, DiskExecutor()).key != exported.key


# -- passport ----------------------------------------------------------------------------------------------------------
def test_passport_chains_the_keys_so_an_upstream_change_reaches_the_export(run):
    def chain():
        trained = run.train(DiskExecutor())
        return [run.split, run.tfrecords, trained, P.stage_export(run.store, run.cfg, trained, DiskExecutor())]
    first = chain()
    passport = P.passport(first)
    assert passport["format"] == "taoflow-passport/1"
    assert passport["stages"] == {s.stage: s.key for s in first}
    again = chain()
    assert all(s.cached for s in again[2:]) and P.passport(again) == passport  # cached or not: the same model
    run.cfg.train_spec = str(demo_spec(run.root / "other" / "train.txt", replace=SHORT + (
        ("max_learning_rate: 0.005", "max_learning_rate: 0.004"),)))
    changed = chain()
    other = P.passport(changed)
    assert other["stages"]["split"] == passport["stages"]["split"]
    assert other["stages"]["train"] != passport["stages"]["train"]
    assert other["stages"]["export"] != passport["stages"]["export"]  # the export's key holds the train key
    assert other["id"] != passport["id"]


def test_passport_names_tell_apart_stages_that_ran_more_than_once(tmp_path):
    store = Store(tmp_path / "ws")
    a = P.run_stage(store, "convert", {"dataset": "a"}, lambda tmp, key: {})
    b = P.run_stage(store, "convert", {"dataset": "b"}, lambda tmp, key: {})
    passport = P.passport([a, b], names=["convert:a", "convert:b"])
    assert passport["stages"] == {"convert:a": a.key, "convert:b": b.key}
    assert passport["id"] != P.passport([b, a], names=["convert:a", "convert:b"])["id"]


# -- dataset_sources ---------------------------------------------------------------------------------------------------
def sources(tmp_path, *extra):
    return P.dataset_sources(P.RunConfig(workspace=str(tmp_path / "ws"), dataset_path=str(tmp_path / "crpd"),
                                         extra_datasets=list(extra)))


GOOD = {"path": "/data/signs", "class_map": {"Stop": "road_sign"}, "name": "signs"}


def test_dataset_sources_lists_the_main_dataset_first_then_the_extra_ones(tmp_path):
    main, extra, unnamed = sources(tmp_path, GOOD, {"path": str(tmp_path / "crpd"), "kind": "crpd"})
    assert (main.name, main.kind, main.class_map) == ("crpd", "crpd", None)
    assert (extra.name, extra.kind, extra.class_map) == ("signs", "kitti", (("stop", "road_sign"),))
    assert unnamed.name == "crpd-2" and unnamed.kind == "crpd"  # named after its folder, kept distinct


@pytest.mark.parametrize("entry, message", [
    ("signs", "expected {kind, path, class_map, name} with a path"),
    ({"kind": "kitti"}, "expected {kind, path, class_map, name} with a path"),
    ({"path": "/data/x", "classmap": {}}, "unknown key(s) classmap"),
    ({"path": "/data/x", "kind": "coco"}, "kind must be crpd or kitti, got 'coco'"),
    ({"path": "/data/x", "class_map": {"car": 1}}, "class_map must map class names to class names"),
    ({"path": "/data/x", "class_map": ["car"]}, "class_map must map class names to class names"),
    ({"path": "/data/x", "kind": "crpd", "class_map": {"a": "b"}}, "class_map applies to kitti datasets"),
    ({"path": "/data/x", "name": "signs"}, "another dataset is already named 'signs'"),
    ({"path": "/data/x", "name": "crpd"}, "another dataset is already named 'crpd'"),
    ({"path": "/data/x", "name": "Road Signs"}, "dataset name 'Road Signs'"),
    ({"path": "/data/x", "class_map": {"car": "two words"}}, "bad class mapping"),
])
def test_a_bad_extra_dataset_is_one_error_naming_its_entry(tmp_path, entry, message):
    with pytest.raises(TaoflowError) as e:
        sources(tmp_path, GOOD, entry)
    assert str(e.value).startswith("extra_datasets[1]: ") and message in str(e.value)
