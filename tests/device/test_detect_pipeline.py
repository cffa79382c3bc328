"""The detect loop's three stages (agent_detect.Pipeline): frame order, bounded frames in flight with reused buffers,
each stage in its own thread, errors raised in the caller from any stage, clean stops."""

import threading

import numpy as np
import pytest
from agent_common import AgentError
from agent_detect import FRAMES_IN_FLIGHT, Pipeline

SPEC = {"name": "Input", "channels": 3, "height": 4, "width": 6, "channel_order": "BGR", "mean": [0, 0, 0],
        "scale": 1.0}


class FakeSource(object):
    """Frame i is an 8x8 image filled with i % 256; records whether a reused image came back in."""

    def __init__(self, count, fail_at=None):
        self.count, self.fail_at, self.next, self.reused = count, fail_at, 0, 0

    def read(self, into=None):
        if self.next == self.fail_at:
            raise AgentError("cannot decode the image", "frame {}".format(self.next))
        if self.next >= self.count:
            return None
        if into is not None:
            self.reused += 1
            image = into
        else:
            image = np.empty((8, 8, 3), np.uint8)
        image[:] = self.next % 256
        self.next += 1
        return self.next - 1, image, None


def stage_threads():
    return {t.name for t in threading.enumerate() if t.name.startswith("detect-")}


def test_frames_come_out_in_order_each_stage_in_its_own_thread_with_reused_buffers():
    source = FakeSource(50)
    seen = {"infer": set(), "finish": set(), "batches": set(), "in_flight": 0, "most": 0, "out": []}
    lock = threading.Lock()

    def infer(frame):
        seen["infer"].add(threading.current_thread().name)
        seen["batches"].add(id(frame.batch))
        assert frame.batch[0, 0, 0, 0] == frame.index % 256  # pre-processed from its own image
        frame.raw = frame.index * 10

    def finish(frame):
        seen["finish"].add(threading.current_thread().name)
        seen["out"].append((frame.index, frame.raw, int(frame.image[0, 0, 0])))

    def read(into):
        got = source.read(into)
        with lock:
            seen["in_flight"] += got is not None
            seen["most"] = max(seen["most"], seen["in_flight"])
        return got

    def finish_counting(frame):
        finish(frame)
        with lock:
            seen["in_flight"] -= 1

    pipeline = Pipeline(read, lambda: SPEC, infer, finish_counting)
    pipeline.run()
    assert seen["out"] == [(i, i * 10, i % 256) for i in range(50)]
    assert seen["infer"] == {threading.current_thread().name} and seen["finish"] == {"detect-write"}
    assert seen["most"] <= FRAMES_IN_FLIGHT and len(seen["batches"]) <= FRAMES_IN_FLIGHT
    assert source.reused >= 50 - FRAMES_IN_FLIGHT  # every frame after the first few decoded into a used image
    assert set(pipeline.busy) == {"decode", "pre", "infer", "post"} and min(pipeline.busy.values()) >= 0
    assert not stage_threads()


@pytest.mark.parametrize("where", ["read", "infer", "finish"])
def test_an_error_in_any_stage_stops_the_others_and_is_raised_by_run(where):
    source = FakeSource(1000, fail_at=7 if where == "read" else None)
    finished = []

    def infer(frame):
        if where == "infer" and frame.index == 7:
            raise AgentError("TensorRT execution failed")
        frame.raw = frame.index

    def finish(frame):
        if where == "finish" and frame.index == 7:
            raise ValueError("disk full")
        finished.append(frame.index)

    with pytest.raises((AgentError, ValueError)) as raised:
        Pipeline(source.read, lambda: SPEC, infer, finish).run()
    assert {"read": "cannot decode", "infer": "TensorRT", "finish": "disk full"}[where] in str(raised.value)
    assert finished == list(range(len(finished))) and len(finished) <= 7  # in order, nothing after the failure
    assert source.next < 7 + 2 * FRAMES_IN_FLIGHT  # the reader stopped soon after
    assert not stage_threads()


def test_stop_ends_the_run_after_the_inferred_frames_are_finished_and_limit_caps_the_reads():
    source = FakeSource(10_000)
    finished, inferred = [], []
    pipeline = None

    def infer(frame):
        inferred.append(frame.index)
        frame.raw = frame.index

    def finish(frame):
        finished.append(frame.index)
        if frame.index == 20:
            pipeline.stop()

    pipeline = Pipeline(source.read, lambda: SPEC, infer, finish)
    pipeline.run()
    assert finished == inferred and finished == list(range(len(finished))) and 20 < len(finished) < 21 + 4
    assert not stage_threads()

    limited = FakeSource(100)
    out = []
    Pipeline(limited.read, lambda: SPEC, lambda f: None, lambda f: out.append(f.index), limit=9).run()
    assert out == list(range(9)) and limited.next == 9


def test_a_model_change_mid_run_pre_processes_again_for_the_new_input():
    source = FakeSource(40)
    small, large = dict(SPEC), dict(SPEC, height=5, width=7)
    active = {"spec": small}
    shapes = []

    def infer(frame):
        shapes.append((frame.index, frame.batch.shape))
        if frame.index == 10:
            active["spec"] = large  # a swap: the frames read meanwhile were prepared for the old model

    Pipeline(source.read, lambda: active["spec"], infer, lambda f: None).run()
    assert all(shape == (1, 3, 4, 6) for i, shape in shapes if i <= 10)
    assert all(shape == (1, 3, 5, 7) for i, shape in shapes if i > 10)
