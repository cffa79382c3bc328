"""`taoflow device detect`: the device's current model on a video, over SSH on a simulated device (the agent under
Python 3.6 where it exists): an annotated video OpenCV reads back, one JSON line per frame with the detections the
host computes on the same frames, KITTI labels per frame and the time split per frame."""

import json
import sys
from pathlib import Path

import cv2
import pytest

from taoflow.cli import main
from taoflow.deploy import deploy_to_device, load_inventory, load_package
from taoflow.deploy.agent import agent_dir
from taoflow.deploy.rollout import _iou

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
    assert all(result["ms_per_frame"][k] > 0 for k in ("pre", "infer", "post", "total")) and result["fps"] > 0

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
