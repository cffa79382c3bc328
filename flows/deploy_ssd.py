"""Prefect flow `deploy-ssd`: package an exported model with host-checked samples, then roll it out over SSH —
probe, group by engine key, preflight, canary, waves, activate, rollback on failure (taoflow/deploy/rollout.py) —
and publish the fleet as a table artifact."""

from pathlib import Path
from typing import Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.executors import model_key
from taoflow.deploy import load_inventory, load_package
from taoflow.deploy.package_builder import build_package, list_images
from taoflow.deploy.rollout import rollout
from taoflow.store import digest


@task(name="package")
def make_package(export_dir, sample_images, passport, dest, reference_labels=None, tao_key_block=None,
                 etlt_devices="tensorrt"):
    """Model + samples/expected.json (computed on the host, or TAO's inference labels for TAO's own export); the
    same package goes to every device. A .etlt is decoded on the host with its key (resolved here, as for the
    rollout) for its expectations and preflight facts."""
    if Path(dest, "model.json").exists():
        return str(dest)  # packages are content-addressed by their export (dest includes the export key)
    key = None
    if any(Path(export_dir).glob("*.etlt")):
        key = model_key(tao_key_block)  # None: TAO's .etlt falls back to its inference labels
    build_package(export_dir, dest, sample_images, passport=passport, reference_labels=reference_labels,
                  etlt_key=key, etlt_devices=etlt_devices)
    return str(dest)


def etlt_key(package, key_block=None):
    """The key of a package whose model is an .etlt (tao-converter needs it on the device), from the same sources
    as training: the Prefect Secret block named `key_block`, else $TAO_MODEL_KEY. Resolved inside the task, never
    passed as a parameter: Prefect records parameters. None for other models."""
    if not str(load_package(package).meta.get("model_file", "")).endswith(".etlt"):
        return None
    return model_key(key_block)


@task(name="rollout")
def run_rollout(inventory, devices, tags, package, model_name, wave_size, abort_threshold, tao_key_block=None):
    logger = get_run_logger()
    fleet = load_inventory(inventory)
    chosen = fleet.select(devices, tags)
    if not chosen:
        raise ValueError(f"no device in {inventory} matches devices={devices} tags={tags}")
    report = rollout(chosen, package, name=model_name, wave_size=wave_size, abort_threshold=abort_threshold,
                     concurrency=fleet.concurrency, keep=fleet.keep, etlt_key=etlt_key(package, tao_key_block),
                     on_event=lambda e: logger.info("%s", {k: v for k, v in e.items() if k != "passport"}))
    return report.to_dict(), report.table(), report.summary()


@flow(name="deploy-ssd", log_prints=True)
def deploy_ssd(export_dir: str, inventory: str, sample_images: str, model_name: str = "ssd",
               passport: Optional[dict] = None, devices: Optional[list[str]] = None, tags: Optional[list[str]] = None,
               wave_size: int = 8, abort_threshold: float = 0.25, workspace: str = "workspace",
               reference_labels: Optional[str] = None, tao_key_block: Optional[str] = None,
               etlt_devices: Literal["tensorrt", "onnxruntime"] = "tensorrt") -> dict:
    """`reference_labels`: the labels/ TAO's `ssd inference` wrote for `sample_images` with the exported model,
    needed for TAO's own export (only TensorRT runs it); a native export's detections are computed on the host.
    `tao_key_block`: the Prefect Secret block holding the .etlt key (default: $TAO_MODEL_KEY), as in train-ssd.
    `etlt_devices`: for a native .etlt export, "tensorrt" ships the .etlt (tao-converter builds it on the device),
    "onnxruntime" ships the ONNX decoded on the host (ONNX Runtime devices cannot decode a .etlt)."""
    export_dir = Path(export_dir).resolve()
    # the export dir's name is its content key; samples, passport and reference labels are part of the package
    samples = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in list_images(sample_images)]
    labels = sorted((str(p), p.stat().st_mtime_ns) for p in Path(reference_labels).glob("*.txt")) \
        if reference_labels else None
    parts = [samples, passport, labels] + ([etlt_devices] if etlt_devices != "tensorrt" else [])
    dest = Path(workspace).resolve() / "packages" / f"{export_dir.name}-{digest(parts)[:12]}"
    package = make_package(str(export_dir), sample_images, passport, dest, reference_labels, tao_key_block,
                           etlt_devices)
    report, table, summary = run_rollout(inventory, devices, tags, package, model_name, wave_size, abort_threshold,
                                         tao_key_block)
    create_table_artifact(table, key="fleet", description=summary)
    create_markdown_artifact(f"# deploy-ssd\n\n{summary}\n", key="deploy-ssd-summary")
    print(summary)
    return {"ok": report["ok"], "summary": summary, "devices": table, "package": package}
