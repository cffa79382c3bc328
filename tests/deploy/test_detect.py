"""`taoflow device detect`: the device's current model on a video, over SSH on a simulated device (the agent under
Python 3.6 where it exists): an annotated video OpenCV reads back, one JSON line per frame with the detections the
host computes on the same frames, KITTI labels per frame and the time split per frame."""

import json
import os
import signal
import sys
from pathlib import Path

import cv2
import pytest

from taoflow.cli import main
from taoflow.deploy import load_inventory, load_package
from taoflow.deploy.agent import agent_dir
from taoflow.deploy.rollout import _iou
from tests.deploy.sync import deploy_to_device

pytestmark = pytest.mark.slow


def write_video(path, images, size=(320, 240), repeat=3):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    count = 0
    for _ in range(repeat):
        for image in images:
            writer.write(cv2.resize(cv2.imread(str(image)), size))
            count += 1
    writer.release()
    return count


def host_detections(package, video, threshold):
    """The same frames decoded and run on the host with the agent's own inference code."""
    sys.path.insert(0, str(agent_dir()))
    from agent_infer import OnnxRuntimeModel, parse_nms, preprocess
    from agent_package import load_labels, load_model_json
    meta = load_model_json(str(package))
    labels = load_labels(str(package), meta["classes"])
    model = OnnxRuntimeModel(str(package / meta["model_file"]), meta)
    capture, found = cv2.VideoCapture(str(video)), []
    while True:
        ok, image = capture.read()
        if not ok:
            return found
        nms, keep = model.infer(preprocess(image, meta["input"]))
        found.append([d for d in parse_nms(nms, keep, 0, labels, image.shape[1], image.shape[0])
                      if d["confidence"] >= threshold])


def test_detect_on_a_video_writes_video_jsonl_and_kitti_matching_the_host(sim_fleet, device_python,
                                                                          selftest_package, capsys):
    sims = sim_fleet(1)
    inventory = sims.write_inventory(device_python)
    device = load_inventory(inventory).devices[0]
    package = load_package(selftest_package)
    deploy_to_device(device, package, name="lpd")
    root = sims.devices[0].root
    video = root / "clip.avi"
    frames = write_video(video, sorted((selftest_package / "samples").glob("*.png")))
    code = main(["device", "detect", "nano-00", "-i", str(inventory), "--model", "lpd", "--source", str(video),
                 "--video-out", str(root / "annotated.avi"), "--jsonl", str(root / "det.jsonl"),
                 "--kitti-dir", str(root / "kitti"), "--threshold", "0.2", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["frames"] == frames and result["version"] == package.version
    assert all(result["ms_per_frame"][k] > 0 for k in ("decode", "pre", "infer", "post", "total")) and result["fps"] > 0
    # the stages overlap: no one of them takes longer per frame than the whole loop
    assert result["stages_overlap"] and max(result["ms_per_frame"][k] for k in ("decode", "pre", "infer", "post")) \
        <= result["ms_per_frame"]["total"] * 1.05

    capture, read = cv2.VideoCapture(str(root / "annotated.avi")), 0
    while capture.read()[0]:
        read += 1
    assert read == frames

    lines = [json.loads(line) for line in (root / "det.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(frames))
    assert {line["version"] for line in lines} == {package.version}
    expected = host_detections(selftest_package, video, 0.2)
    assert sum(len(e) for e in expected) > 0
    for line, host in zip(lines, expected):
        got = sorted(line["detections"], key=lambda d: (d["label"], d["box"]))
        want = sorted(host, key=lambda d: (d["label"], d["box"]))
        assert [d["label"] for d in got] == [d["label"] for d in want], (line["frame"], got, want)
        for g, w in zip(got, want):
            assert _iou(g["box"], w["box"]) > 0.9 and abs(g["confidence"] - w["confidence"]) < 0.02
    kitti = sorted((root / "kitti").glob("*.txt"))
    assert len(kitti) == frames
    first = [ln.split() for ln in kitti[0].read_text().splitlines()]
    assert all(len(fields) == 16 for fields in first)


def test_detect_errors_are_one_line_with_exit_2(sim_fleet, device_python, selftest_package, capsys):
    sims = sim_fleet(1)
    inventory = sims.write_inventory(device_python)
    device = load_inventory(inventory).devices[0]
    code = main(["device", "detect", "nano-00", "-i", str(inventory), "--model", "lpd", "--source", "/nonexistent"])
    err = capsys.readouterr().err
    assert code in (1, 2) and "no current version of lpd" in err and "Traceback" not in err
    deploy_to_device(device, load_package(selftest_package), name="lpd")
    code = main(["device", "detect", "nano-00", "-i", str(inventory), "--model", "lpd", "--source",
                 str(Path(sims.devices[0].root) / "missing.avi")])
    err = capsys.readouterr().err
    assert code in (1, 2) and "no such video file" in err and "Traceback" not in err


def test_the_service_hot_swaps_to_a_new_current_and_keeps_serving_when_one_fails_to_load(
        sim_fleet, device_python, package_copy, tmp_path):
    import shutil
    import threading
    import time

    from taoflow.deploy import fleet_status
    from taoflow.deploy.fleet import detect
    sims = sim_fleet(1)
    inventory = sims.write_inventory(device_python, command_timeout=120)
    device = load_inventory(inventory).devices[0]
    root = sims.devices[0].root
    v1, v2 = load_package(package_copy("one")), load_package(package_copy("two"))
    deploy_to_device(device, v1, name="lpd")
    write_video(root / "loop.avi", sorted((v1.path / "samples").glob("*.png")), repeat=1)
    beat_file, jsonl = root / "detect" / "lpd.json", root / "live.jsonl"
    outcome = {}
    service = threading.Thread(target=lambda: outcome.update(result=detect(
        device, "lpd", str(root / "loop.avi"), jsonl=str(jsonl), serve=True, loop=True, seconds=90,
        threshold=0.2)), daemon=True)
    service.start()

    def wait_for(predicate, what, limit=60):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            beat = json.loads(beat_file.read_text()) if beat_file.is_file() else {}
            if predicate(beat):
                return beat
            time.sleep(0.2)
        pytest.fail(f"service: {what} never happened; last heartbeat {beat}")

    first = wait_for(lambda b: b.get("version") == v1.version and b.get("frames", 0) > 10, "v1 serving")
    deploy_to_device(device, v2, name="lpd")  # the rollout switches `current` under the running service
    swapped = wait_for(lambda b: b.get("version") == v2.version, "swap to v2")
    assert swapped["pid"] == first["pid"] and swapped["swaps"] == 1
    status = fleet_status([device], "lpd")["nano-00"]["lpd"]
    assert status["service"]["version"] == v2.version and status["service"]["pid"] == first["pid"]

    # a version whose model does not load: the service keeps v2 and says why
    broken = root / "models" / "lpd" / "broken"
    shutil.copytree(root / "models" / "lpd" / v2.version, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    (root / "models" / "lpd" / "current.tmp").symlink_to("broken")
    (root / "models" / "lpd" / "current.tmp").replace(root / "models" / "lpd" / "current")
    failed = wait_for(lambda b: "broken did not load" in (b.get("last_error") or ""), "refusal of broken")
    assert failed["version"] == v2.version and failed["pid"] == first["pid"]
    frames_before = failed["frames"]
    wait_for(lambda b: b.get("frames", 0) > frames_before + 5, "v2 still serving")
    os.kill(first["pid"], signal.SIGTERM)
    service.join(60)
    result = outcome["result"]
    assert result["swaps"] == 1 and result["dropped"] == 0 and result["version"] == v2.version
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(len(lines)))  # no gap, no restart
    versions = [line["version"] for line in lines]
    switch = versions.index(v2.version)
    assert set(versions[:switch]) == {v1.version} and set(versions[switch:]) == {v2.version}
    assert json.loads(beat_file.read_text())["status"] == "stopped"


def test_the_live_gate_waits_for_the_services_heartbeat_and_reverts_a_device_too_slow(
        sim_fleet, device_python, package_copy):
    import threading
    import time

    from taoflow.deploy import rollout
    from taoflow.deploy.fleet import detect
    sims = sim_fleet(1)
    root = sims.devices[0].root
    v1, v2, v3 = (load_package(package_copy(tag)) for tag in ("one", "two", "three"))

    def inventory(min_fps):
        return load_inventory(sims.write_inventory(device_python, command_timeout=120, extra_defaults=(
            f"min_fps = {min_fps}\nlive_timeout = 15\n"))).devices

    devices = inventory(0)
    assert rollout(devices, v1, name="lpd").ok  # no service yet: no live gate
    write_video(root / "loop.avi", sorted((v1.path / "samples").glob("*.png")), repeat=1)
    outcome = {}
    service = threading.Thread(target=lambda: outcome.update(result=detect(
        devices[0], "lpd", str(root / "loop.avi"), serve=True, loop=True, seconds=120)), daemon=True)
    service.start()
    beat_file = root / "detect" / "lpd.json"
    deadline = time.monotonic() + 60
    while not (beat_file.is_file() and json.loads(beat_file.read_text()).get("fps")):
        assert time.monotonic() < deadline, "the service never reported"
        time.sleep(0.2)
    try:
        report = rollout(inventory(0.5), v2, name="lpd")
        assert report.ok, report.table()
        assert json.loads(beat_file.read_text())["version"] == v2.version  # the gate saw the service run it

        report = rollout(inventory(9999), v3, name="lpd")  # no Nano serves 9,999 FPS
        bad = report.devices["nano-00"]
        assert bad.status == "failed" and "live gate" in bad.error and ">= 9999 FPS" in bad.error, bad.error
        assert bad.current == v2.version and os.readlink(root / "models" / "lpd" / "current") == v2.version
        deadline = time.monotonic() + 30  # the service follows `current` back
        while json.loads(beat_file.read_text())["version"] != v2.version:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.kill(json.loads(beat_file.read_text())["pid"], signal.SIGTERM)
        service.join(60)
    assert outcome["result"]["swaps"] >= 3 and outcome["result"]["dropped"] == 0
