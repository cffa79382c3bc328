"""`detect`: run an installed model (the `current` one by default) on a video file, an image folder, a V4L2 camera
(/dev/videoN), a CSI camera (a GStreamer pipeline string, e.g. `nvarguscamerasrc ! ... ! appsink`) or an RTSP URL.

Outputs, each optional: an annotated video (--video-out; .avi is MJPG, .mp4 is mp4v), one JSON line per frame
(--jsonl: time, frame index, model version, detections; written as frames come, so another process can follow
it), KITTI label files per frame (--kitti-dir: <frame index>.txt, the score in the 16th field). The reply gives
the frame count, the FPS and the time per frame split into pre-processing (resize, normalise), inference and
post-processing (NMS where the model does not end in the NMS plugin, parsing, drawing and writing outputs).
The model runs as in `smoke` (agent_smoke.open_model: the TensorRT engine, else ONNX Runtime).

`--serve` runs until stopped (SIGTERM/SIGINT), as the device's detector service: it follows `current`, and after a
switch loads the new version beside the old one (ONNX Runtime in a thread; a TensorRT engine between two frames,
since its CUDA context belongs to the serving thread), swaps at a frame boundary and closes the old one; a version
that fails to load is not retried and the old one keeps serving. Every second it writes a heartbeat,
<root>/detect/<name>.json (version, live FPS, frames, dropped frames, last error, pid), which `status` reports.
"""

import json
import os
import signal
import threading
import time

import cv2

import agent_store
from agent_common import AgentError, write_json_atomic
from agent_infer import parse_nms, preprocess
from agent_package import load_labels, load_model_json
from agent_smoke import open_model

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def open_source(source):
    """(frames iterator of (index, BGR image, source time in ms or None), frames per second or None, release)."""
    if os.path.isdir(source):
        names = sorted(n for n in os.listdir(source) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise AgentError("no images ({}) in the folder".format(", ".join(IMAGE_EXTENSIONS)), source)

        def images():
            for i, name in enumerate(names):
                image = cv2.imread(os.path.join(source, name), cv2.IMREAD_COLOR)
                if image is None:
                    raise AgentError("cannot decode the image", os.path.join(source, name))
                yield i, image, None
        return images(), None, lambda: None
    if source.startswith("/dev/video") and source[len("/dev/video"):].isdigit():
        capture = cv2.VideoCapture(int(source[len("/dev/video"):]), cv2.CAP_V4L2)
    elif "!" in source:  # a GStreamer pipeline (CSI cameras on a Jetson: nvarguscamerasrc ... ! appsink)
        capture = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    else:  # a video file or a network stream (rtsp://...)
        if "://" not in source and not os.path.isfile(source):
            raise AgentError("no such video file, image folder, camera or stream", source)
        capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise AgentError("OpenCV cannot open the source (codec, camera or GStreamer support missing?)", source)
    fps = capture.get(cv2.CAP_PROP_FPS) or None

    def frames():
        i = 0
        while True:
            ok, image = capture.read()
            if not ok:
                return
            position = capture.get(cv2.CAP_PROP_POS_MSEC)
            yield i, image, round(position, 3) if position else None
            i += 1
    return frames(), fps, capture.release


def _runner(model):
    """(run, post): the model's inference split where it can be (ONNX Runtime: the graph, then NMS in numpy)."""
    if hasattr(model, "run_raw"):
        return model.run_raw, model.postprocess
    return model.infer, lambda out: out


def annotate(image, detections):
    for det in detections:
        x1, y1, x2, y2 = [int(round(v)) for v in det["box"]]
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(image, "{} {:.2f}".format(det["label"], det["confidence"]), (x1, max(12, y1 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1, cv2.LINE_AA)
    return image


def kitti_lines(detections):
    return "".join("{} 0.00 0 0.00 {:.2f} {:.2f} {:.2f} {:.2f} 0.00 0.00 0.00 0.00 0.00 0.00 0.00 {:.6f}\n".format(
        d["label"], d["box"][0], d["box"][1], d["box"][2], d["box"][3], d["confidence"]) for d in detections)


def _video_writer(path, fps, width, height):
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.lower().endswith(".mp4") else "MJPG"))
    writer = cv2.VideoWriter(path, fourcc, float(fps or 30.0), (width, height))
    if not writer.isOpened():
        raise AgentError("OpenCV cannot write this video (use .avi or .mp4)", path)
    return writer


def _check_output(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise AgentError("the output folder does not exist", folder)
    return path


def detect(root, name, source, version=None, video_out=None, jsonl=None, kitti_dir=None, max_frames=None,
           seconds=None, threshold=0.3, runtime="auto"):
    models = os.path.join(root, "models", agent_store.check_name("model name", name))
    version = version or agent_store.current_version(models)
    if version is None:
        raise AgentError("no current version of {} on this device: deploy one first".format(name), models)
    package = os.path.join(models, agent_store.check_name("version", version))
    if not os.path.isdir(package):
        raise AgentError("version {} of {} is not installed".format(version, name), package)
    for path in (video_out, jsonl):
        if path:
            _check_output(path)
    if kitti_dir and not os.path.isdir(kitti_dir):
        os.makedirs(kitti_dir)
    if max_frames is not None and max_frames < 1:
        raise AgentError("--max-frames must be at least 1")
    meta = load_model_json(package)
    labels = load_labels(package, meta["classes"])
    frames, fps, release = open_source(source)
    model = open_model(package, meta, runtime)
    run, post = _runner(model)
    writer = None
    lines = open(jsonl, "w") if jsonl else None
    pre_s = infer_s = post_s = 0.0
    count = 0
    started = time.monotonic()
    try:
        for index, image, position in frames:
            t0 = time.monotonic()
            height, width = image.shape[:2]
            batch = preprocess(image, meta["input"])
            t1 = time.monotonic()
            raw = run(batch)
            t2 = time.monotonic()
            nms_out, keep = post(raw)
            detections = [d for d in parse_nms(nms_out, keep, 0, labels, width, height)
                          if d["confidence"] >= threshold]
            if lines is not None:
                lines.write(json.dumps({"frame": index, "time": round(time.time(), 6), "source_ms": position,
                                        "version": version, "detections": detections}, sort_keys=True) + "\n")
                lines.flush()
            if kitti_dir:
                with open(os.path.join(kitti_dir, "{:06d}.txt".format(index)), "w") as f:
                    f.write(kitti_lines(detections))
            if video_out:
                if writer is None:
                    writer = _video_writer(video_out, fps, width, height)
                writer.write(annotate(image, detections))
            t3 = time.monotonic()
            pre_s, infer_s, post_s = pre_s + t1 - t0, infer_s + t2 - t1, post_s + t3 - t2
            count += 1
            if (max_frames and count >= max_frames) or (seconds and time.monotonic() - started >= seconds):
                break
    finally:
        release()
        model.close()
        if writer is not None:
            writer.release()
        if lines is not None:
            lines.close()
    if count == 0:
        raise AgentError("the source gave no frames", source)
    wall = time.monotonic() - started
    per = lambda s: round(1000.0 * s / count, 3)  # noqa: E731
    return {"name": name, "version": version, "runtime": model.name, "runtime_version": model.version,
            "source": source, "frames": count, "fps": round(count / wall, 2) if wall > 0 else None,
            "ms_per_frame": {"pre": per(pre_s), "infer": per(infer_s), "post": per(post_s),
                             "total": per(wall)},
            "outputs": {"video": video_out, "jsonl": jsonl, "kitti_dir": kitti_dir}}


def heartbeat_path(root, name):
    return os.path.join(root, "detect", agent_store.check_name("model name", name) + ".json")


class _Loaded(object):
    def __init__(self, root, name, version, runtime):
        package = os.path.join(root, "models", name, version)
        self.version = version
        self.meta = load_model_json(package)
        self.labels = load_labels(package, self.meta["classes"])
        self.model = open_model(package, self.meta, runtime)
        self.run, self.post = _runner(self.model)


def serve(root, name, source, jsonl=None, threshold=0.3, runtime="auto", loop=False, max_frames=None,
          seconds=None, beat_every_s=1.0):
    models = os.path.join(root, "models", agent_store.check_name("model name", name))
    version = agent_store.current_version(models)
    if version is None:
        raise AgentError("no current version of {} on this device: deploy one first".format(name), models)
    if jsonl:
        _check_output(jsonl)
    beat_file = heartbeat_path(root, name)
    if not os.path.isdir(os.path.dirname(beat_file)):
        os.makedirs(os.path.dirname(beat_file))
    active = _Loaded(root, name, version, runtime)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    state = {"frames": 0, "dropped": 0, "last_error": None, "swaps": 0, "failed": set(), "loading": None}
    lines = open(jsonl, "a") if jsonl else None
    started = last_beat = time.monotonic()
    window = [0, started]  # frames since, and start of, the current FPS window
    fps = None

    def beat(status="serving"):
        write_json_atomic(beat_file, {
            "name": name, "version": active.version, "status": status, "fps": fps, "frames": state["frames"],
            "dropped": state["dropped"], "swaps": state["swaps"], "last_error": state["last_error"],
            "pid": os.getpid(), "source": source, "time": time.time(), "started": time.time() - (
                time.monotonic() - started)})

    def load_in_background(version):
        slot = {"version": version, "loaded": None, "error": None, "done": threading.Event()}

        def work():
            try:
                slot["loaded"] = _Loaded(root, name, version, runtime)
            except Exception as e:  # a version that fails to load must never stop the service
                slot["error"] = "{}: {}".format(type(e).__name__, e)
            slot["done"].set()
        if active.model.name == "tensorrt":
            work()  # the CUDA context belongs to this thread
        else:
            threading.Thread(target=work, daemon=True).start()
        return slot

    beat()
    try:
        while not stop.is_set():
            frames, _, release = open_source(source)
            try:
                for index, image, position in frames:
                    wanted = agent_store.current_version(models)
                    slot = state["loading"]
                    if slot is None and wanted not in (None, active.version) and wanted not in state["failed"]:
                        state["loading"] = slot = load_in_background(wanted)
                    if slot is not None and slot["done"].is_set():
                        state["loading"] = None
                        if slot["loaded"] is not None:
                            old, active = active, slot["loaded"]
                            old.model.close()
                            state["swaps"] += 1
                        else:
                            state["failed"].add(slot["version"])
                            state["last_error"] = "version {} did not load: {}".format(slot["version"],
                                                                                       slot["error"])
                    height, width = image.shape[:2]
                    try:
                        nms_out, keep = active.post(active.run(preprocess(image, active.meta["input"])))
                        detections = [d for d in parse_nms(nms_out, keep, 0, active.labels, width, height)
                                      if d["confidence"] >= threshold]
                    except Exception as e:  # one bad frame is a dropped frame, not a dead service
                        state["dropped"] += 1
                        state["last_error"] = "frame {}: {}: {}".format(index, type(e).__name__, e)
                        continue
                    state["frames"] += 1
                    window[0] += 1
                    if lines is not None:
                        lines.write(json.dumps({"frame": state["frames"] - 1, "source_frame": index,
                                                "time": round(time.time(), 6), "source_ms": position,
                                                "version": active.version, "detections": detections},
                                               sort_keys=True) + "\n")
                        lines.flush()
                    now = time.monotonic()
                    if now - last_beat >= beat_every_s:
                        fps = round(window[0] / (now - window[1]), 2)
                        window[:] = [0, now]
                        beat()
                        last_beat = now
                    if stop.is_set() or (max_frames and state["frames"] >= max_frames) or \
                            (seconds and now - started >= seconds):
                        stop.set()
                        break
            finally:
                release()
            if not loop:
                break
    finally:
        beat("stopped")
        active.model.close()
        if lines is not None:
            lines.close()
    return {"name": name, "version": active.version, "frames": state["frames"], "dropped": state["dropped"],
            "swaps": state["swaps"], "last_error": state["last_error"], "fps": fps,
            "ms_per_frame": {"pre": 0.0, "infer": 0.0, "post": 0.0,
                             "total": round(1000.0 * (time.monotonic() - started) / max(1, state["frames"]), 3)},
            "outputs": {"jsonl": jsonl, "heartbeat": beat_file}}
