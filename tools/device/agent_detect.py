"""`detect`: run an installed model (the `current` one by default) on a video file, an image folder, a V4L2 camera
(/dev/videoN), a CSI camera (a GStreamer pipeline string, e.g. `nvarguscamerasrc ! ... ! appsink`) or an RTSP URL.

Outputs, each optional: an annotated video (--video-out; .avi is MJPG, .mp4 is mp4v), one JSON line per frame
(--jsonl: time, frame index, model version, detections; written as frames come, so another process can follow
it), KITTI label files per frame (--kitti-dir: <frame index>.txt, the score in the 16th field).
The model runs as in `smoke` (agent_smoke.open_model: the TensorRT engine, else ONNX Runtime).

Frames go through three stages at once, each in its own thread, in frame order (Pipeline below): reading and
pre-processing the next frame, inference on this one, post-processing and writing the previous one. Inference
and OpenCV release the GIL, so on a multi-core device the loop runs at about the speed of its slowest stage
rather than of their sum. The reply's ms_per_frame gives each stage's own time per frame: decode (reading the
source), pre (resize, normalise), infer (the model), post (NMS where the model does not end in the NMS plugin,
parsing, drawing, writing outputs); total is the wall time per frame. Since the stages overlap, decode + pre +
infer + post can exceed total: the largest of them is what limits the FPS.

`--serve` runs until stopped (SIGTERM/SIGINT), as the device's detector service: it follows `current`, and after a
switch loads the new version beside the old one in a model thread while the old one keeps serving, swaps at a
frame boundary and has the model thread close the old one; a version that fails to load is not retried and the
old one keeps serving. One thread creates and closes every model because a TensorRT model's CUDA context can
only be destroyed by the thread that made it (pycuda's rule); the serving thread pushes and pops it around each
inference. Every second it writes a heartbeat, <root>/detect/<name>.json (version, live FPS, frames, dropped
frames, last error, pid), which `status` reports.
"""

import json
import os
import queue
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
FRAMES_IN_FLIGHT = 4  # one being read, one waiting, one in inference, one being written
POLL_S = 0.1  # how often a waiting stage looks whether the run was stopped


class Source(object):
    """Frames of a video file, image folder, camera or stream: read(into) -> (index, BGR image, source time in ms
    or None), or None at the end. `into`, an image an earlier read returned, is decoded into when its size fits."""

    def __init__(self, source):
        self.source, self.capture, self.names, self.fps, self.next = source, None, None, None, 0
        if os.path.isdir(source):
            self.names = sorted(n for n in os.listdir(source) if n.lower().endswith(IMAGE_EXTENSIONS))
            if not self.names:
                raise AgentError("no images ({}) in the folder".format(", ".join(IMAGE_EXTENSIONS)), source)
            return
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
        self.capture = capture
        self.fps = capture.get(cv2.CAP_PROP_FPS) or None

    def read(self, into=None):
        index = self.next
        if self.names is not None:
            if index >= len(self.names):
                return None
            path = os.path.join(self.source, self.names[index])
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise AgentError("cannot decode the image", path)
            position = None
        else:
            ok, image = self.capture.read(into) if into is not None else self.capture.read()
            if not ok:
                return None
            position = self.capture.get(cv2.CAP_PROP_POS_MSEC)
            position = round(position, 3) if position else None
        self.next += 1
        return index, image, position

    def release(self):
        if self.capture is not None:
            self.capture.release()


def runner(model):
    """(run, post) of a model: the runtime alone (this thread, the one the model's resources belong to), then
    what turns its outputs into TAO's NMS layout (numpy only, safe in any thread)."""
    if hasattr(model, "run_raw"):
        return model.run_raw, model.postprocess
    return model.infer, lambda out: out


class _Frame(object):
    """One frame in flight, and the buffers it keeps for the next frame it carries (no allocation per frame)."""

    __slots__ = ("index", "image", "position", "batch", "spec", "raw", "model", "error")

    def __init__(self):
        self.index = self.image = self.position = self.batch = self.spec = None
        self.raw = self.model = self.error = None


class Pipeline(object):
    """read + pre-process (reader thread) -> infer (the calling thread) -> finish (writer thread), in frame order.

    read(into) is a Source.read; input_spec() the model input spec frames are pre-processed for now; infer(frame)
    sets frame.raw (and whatever finish needs) in the calling thread, where the model lives; finish(frame) writes
    the frame's outputs. At most FRAMES_IN_FLIGHT frames exist: each owns an image and an input buffer reused for
    the frame after it, and the reader waits for a free one, which also bounds every queue. An exception in any
    stage stops the others and is raised by run(); stop() (any thread, e.g. a signal handler) ends the run after
    the frames already inferred are finished. busy: each stage's own seconds (decode, pre, infer, post).
    """

    def __init__(self, read, input_spec, infer, finish, limit=None):
        self.read, self.input_spec, self.infer, self.finish, self.limit = read, input_spec, infer, finish, limit
        self.busy = {"decode": 0.0, "pre": 0.0, "infer": 0.0, "post": 0.0}
        self.stopping = threading.Event()
        self._errors = []
        self._free = queue.Queue()
        for _ in range(FRAMES_IN_FLIGHT):
            self._free.put(_Frame())
        self._to_infer = queue.Queue()
        self._to_finish = queue.Queue()

    def stop(self):
        self.stopping.set()

    def _fail(self, error):
        self._errors.append(error)
        self.stopping.set()

    def _take(self, source):
        """The next item of a queue, or None once the run is stopping (waits in slices to notice that)."""
        while not self.stopping.is_set():
            try:
                return source.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

    def _reader(self):
        count = 0
        try:
            while self.limit is None or count < self.limit:
                frame = self._take(self._free)
                if frame is None:
                    return
                t0 = time.monotonic()
                got = self.read(frame.image)
                t1 = time.monotonic()
                if got is None:
                    return
                frame.index, frame.image, frame.position = got
                frame.spec = self.input_spec()
                frame.batch = preprocess(frame.image, frame.spec, out=frame.batch)
                self.busy["decode"] += t1 - t0
                self.busy["pre"] += time.monotonic() - t1
                self._to_infer.put(frame)
                count += 1
        except BaseException as e:  # noqa: B902 - raised again by run() in the calling thread
            self._fail(e)
        finally:
            self._to_infer.put(None)  # the end of the frames

    def _writer(self):
        try:
            while True:
                frame = self._to_finish.get()
                if frame is None:
                    return
                t0 = time.monotonic()
                self.finish(frame)
                self.busy["post"] += time.monotonic() - t0
                frame.raw = frame.model = frame.error = None
                self._free.put(frame)
        except BaseException as e:  # noqa: B902 - raised again by run() in the calling thread
            self._fail(e)

    def run(self):
        reader = threading.Thread(target=self._reader, name="detect-read")
        writer = threading.Thread(target=self._writer, name="detect-write")
        reader.daemon = writer.daemon = True  # never keep a stopped agent alive; run() joins them anyway
        reader.start()
        writer.start()
        try:
            while True:
                frame = self._to_infer.get()
                if frame is None or self.stopping.is_set():  # stopped: what is still queued is not inferred
                    break
                spec = self.input_spec()
                if spec != frame.spec:  # the model changed since the frame was pre-processed (a swap)
                    t0 = time.monotonic()
                    frame.spec, frame.batch = spec, preprocess(frame.image, spec, out=frame.batch)
                    self.busy["pre"] += time.monotonic() - t0
                t0 = time.monotonic()
                self.infer(frame)
                self.busy["infer"] += time.monotonic() - t0
                self._to_finish.put(frame)
        except BaseException as e:  # noqa: B902 - stop the other stages first, then raise it
            self._fail(e)
        finally:
            self.stopping.set()
            self._to_finish.put(None)  # after every frame inferred: those are finished first
            writer.join()
            reader.join()
        if self._errors:
            raise self._errors[0]


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


def _ms_per_frame(busy, wall, count):
    per = lambda s: round(1000.0 * s / max(1, count), 3)  # noqa: E731
    timing = {stage: per(seconds) for stage, seconds in busy.items()}
    timing["total"] = per(wall)
    return timing


def _detections(nms_out, keep, labels, image, threshold):
    height, width = image.shape[:2]
    return parse_nms(nms_out, keep, 0, labels, width, height, min_confidence=threshold)


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
    frames = Source(source)
    outputs = {"video": None, "lines": None, "count": 0}
    model = None
    try:
        model = open_model(package, meta, runtime)
        run, post = runner(model)
        outputs["lines"] = open(jsonl, "w") if jsonl else None

        def infer(frame):
            frame.raw = run(frame.batch)

        def finish(frame):
            detections = _detections(*post(frame.raw), labels=labels, image=frame.image, threshold=threshold)
            if outputs["lines"] is not None:
                outputs["lines"].write(json.dumps({
                    "frame": frame.index, "time": round(time.time(), 6), "source_ms": frame.position,
                    "version": version, "detections": detections}, sort_keys=True) + "\n")
                outputs["lines"].flush()
            if kitti_dir:
                with open(os.path.join(kitti_dir, "{:06d}.txt".format(frame.index)), "w") as f:
                    f.write(kitti_lines(detections))
            if video_out:
                if outputs["video"] is None:
                    height, width = frame.image.shape[:2]
                    outputs["video"] = _video_writer(video_out, frames.fps, width, height)
                outputs["video"].write(annotate(frame.image, detections))
            outputs["count"] += 1
            if seconds and time.monotonic() - started >= seconds:
                pipeline.stop()

        pipeline = Pipeline(frames.read, lambda: meta["input"], infer, finish, limit=max_frames)
        started = time.monotonic()
        pipeline.run()
        wall = time.monotonic() - started
    finally:
        frames.release()
        if model is not None:
            model.close()
        if outputs["video"] is not None:
            outputs["video"].release()
        if outputs["lines"] is not None:
            outputs["lines"].close()
    count = outputs["count"]
    if count == 0:
        raise AgentError("the source gave no frames", source)
    return {"name": name, "version": version, "runtime": model.name, "runtime_version": model.version,
            "source": source, "frames": count, "fps": round(count / wall, 2) if wall > 0 else None,
            "ms_per_frame": _ms_per_frame(pipeline.busy, wall, count), "stages_overlap": True,
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
        self.run, self.post = runner(self.model)


class ModelThread(object):
    """The one thread that loads and closes the service's models (see the module docstring for why one).

    load(version) returns a slot whose "done" event is set once "loaded" (a _Loaded) or "error" (a message, and
    the exception itself in "exception") is there; close(loaded) queues the close. A failed load never stops the
    service: it is reported in the slot.
    """

    def __init__(self, load):
        self._load, self._jobs = load, queue.Queue()
        self._thread = threading.Thread(target=self._work, name="detect-models")
        self._thread.daemon = True
        self._thread.start()

    def _work(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, arg = job
            if kind == "load":
                try:
                    arg["loaded"] = self._load(arg["version"])
                except Exception as e:  # a version that fails to load must never stop the service
                    arg["error"], arg["exception"] = "{}: {}".format(type(e).__name__, e), e
                arg["done"].set()
            else:
                try:
                    arg.model.close()
                except Exception:  # noqa: S110 - closing a model it no longer serves cannot stop the service
                    pass

    def call(self, kind, arg):
        self._jobs.put((kind, arg))
        return arg

    def load(self, version):
        return self.call("load", {"version": version, "loaded": None, "error": None, "exception": None,
                                  "done": threading.Event()})

    def close(self, loaded):
        self.call("close", loaded)

    def finish(self):
        """Wait for the queued jobs (closes included) and end the thread."""
        self._jobs.put(None)
        self._thread.join()


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
    worker = ModelThread(lambda v: _Loaded(root, name, v, runtime))
    first = worker.load(version)
    first["done"].wait()
    if first["loaded"] is None:
        worker.finish()
        raise first["exception"]  # the model the service starts with: its error is the command's
    state = {"active": first["loaded"], "frames": 0, "dropped": 0, "last_error": None, "swaps": 0,
             "failed": set(), "loading": None, "fps": None, "source": None,
             "shown": first["loaded"].version}  # the version of the last frame written: what the beat reports
    lines = open(jsonl, "a") if jsonl else None
    started = time.monotonic()
    window = [0, started]  # frames since, and start of, the current FPS window

    def beat(status="serving"):
        write_json_atomic(beat_file, {
            "name": name, "version": state["shown"], "status": status, "fps": state["fps"],
            "frames": state["frames"], "dropped": state["dropped"], "swaps": state["swaps"],
            "last_error": state["last_error"], "pid": os.getpid(), "source": source, "time": time.time(),
            "started": time.time() - (time.monotonic() - started)})

    def read(into):
        while True:
            if state["source"] is None:
                state["source"] = Source(source)
            got = state["source"].read(into)
            if got is not None or not loop:
                return got
            state["source"].release()  # a video file at its end: start it again
            state["source"] = None

    def swap_if_switched():
        """Between two frames: start loading a new `current`, or put a loaded one in service."""
        wanted = agent_store.current_version(models)
        slot = state["loading"]
        active = state["active"]
        if slot is None and wanted not in (None, active.version) and wanted not in state["failed"]:
            state["loading"] = slot = worker.load(wanted)
        if slot is not None and slot["done"].is_set():
            state["loading"] = None
            if slot["loaded"] is not None:
                state["active"] = slot["loaded"]
                worker.close(active)  # its last frame is inferred; post-processing needs no runtime
                state["swaps"] += 1
            else:
                state["failed"].add(slot["version"])
                state["last_error"] = "version {} did not load: {}".format(slot["version"], slot["error"])

    def infer(frame):
        swap_if_switched()
        frame.model = state["active"]
        try:
            frame.raw = frame.model.run(frame.batch)
        except Exception as e:  # one bad frame is a dropped frame, not a dead service
            frame.error = "frame {}: {}: {}".format(frame.index, type(e).__name__, e)

    def finish(frame):
        if max_frames and state["frames"] >= max_frames:
            return
        loaded = frame.model
        if frame.error is None:
            try:
                detections = _detections(*loaded.post(frame.raw), labels=loaded.labels, image=frame.image,
                                         threshold=threshold)
            except Exception as e:  # as above: the frame is dropped
                frame.error = "frame {}: {}: {}".format(frame.index, type(e).__name__, e)
        if frame.error is not None:
            state["dropped"] += 1
            state["last_error"] = frame.error
            return
        state["frames"] += 1
        state["shown"] = loaded.version
        window[0] += 1
        if lines is not None:
            lines.write(json.dumps({"frame": state["frames"] - 1, "source_frame": frame.index,
                                    "time": round(time.time(), 6), "source_ms": frame.position,
                                    "version": loaded.version, "detections": detections}, sort_keys=True) + "\n")
            lines.flush()
        now = time.monotonic()
        if now - window[1] >= beat_every_s:
            state["fps"] = round(window[0] / (now - window[1]), 2)
            window[:] = [0, now]
            beat()
        if (max_frames and state["frames"] >= max_frames) or (seconds and now - started >= seconds):
            pipeline.stop()

    pipeline = Pipeline(read, lambda: state["active"].meta["input"], infer, finish)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: pipeline.stop())
    beat()
    try:
        pipeline.run()
    finally:
        if state["source"] is not None:
            state["source"].release()
        beat("stopped")
        if state["loading"] is not None:  # a load still under way: close what it brings once it is done
            state["loading"]["done"].wait()
            if state["loading"]["loaded"] is not None:
                worker.close(state["loading"]["loaded"])
        worker.close(state["active"])
        worker.finish()
        if lines is not None:
            lines.close()
    wall = time.monotonic() - started
    return {"name": name, "version": state["shown"], "frames": state["frames"], "dropped": state["dropped"],
            "swaps": state["swaps"], "last_error": state["last_error"], "fps": state["fps"],
            "ms_per_frame": _ms_per_frame(pipeline.busy, wall, state["frames"]), "stages_overlap": True,
            "outputs": {"jsonl": jsonl, "heartbeat": beat_file}}
