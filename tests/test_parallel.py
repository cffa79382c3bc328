"""taoflow.parallel with real process pools: chunks cover the input in order, results come back in input order
whatever the number of workers (own pool or a shared one), and an error in one chunk leaves no other chunk
running."""

import os
import time
from pathlib import Path

import pytest

from taoflow.parallel import chunked, default_workers, map_chunks, worker_pool


def squares(chunk):
    return [x * x for x in chunk]


def squares_early_chunks_slow(chunk):
    # the first chunks finish last, so results collected in completion order would come out shuffled
    time.sleep(0.05 if chunk[0] < 8 else 0)
    return [x * x for x in chunk]


def chunks_seen(chunk):
    return [tuple(chunk)]  # one result per chunk: the chunk itself


def worker_pid(chunk):
    return [os.getpid() for _ in chunk]


def marking(chunk):
    """Items are (folder, index); marks the chunk's start and end with files named after its first index."""
    folder, first = Path(chunk[0][0]), chunk[0][1]
    (folder / f"start-{first}").touch()
    if first == 0:
        raise ValueError("chunk 0 failed")
    time.sleep(0.2)  # still busy when chunk 0 fails
    (folder / f"done-{first}").touch()
    return [i for _, i in chunk]


@pytest.mark.parametrize("n_items", range(0, 12))
def test_chunked_covers_every_item_in_order_in_near_equal_chunks(n_items):
    items = [f"item{i}" for i in range(n_items)]
    for n in range(-1, 15):
        chunks = chunked(iter(items), n)
        assert [x for c in chunks for x in c] == items
        assert len(chunks) == max(1, min(n, n_items))
        sizes = [len(c) for c in chunks]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1


def test_default_workers_is_at_least_one_and_at_most_eight():
    assert 1 <= default_workers() <= min(8, os.cpu_count() or 1)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("progress", [False, True])
def test_map_chunks_returns_results_in_input_order(workers, progress):
    items = list(range(37))
    assert map_chunks(squares_early_chunks_slow, items, workers=workers, progress=progress) == [x * x for x in items]


def test_map_chunks_cuts_the_work_per_worker_and_runs_in_one_chunk_without_progress():
    items = list(range(50))
    assert map_chunks(chunks_seen, items, workers=1, progress=False) == [tuple(items)]
    expected = [tuple(c) for c in chunked(items, 2 * 3)]
    assert map_chunks(chunks_seen, items, workers=2, progress=False, chunks_per_worker=3) == expected
    assert map_chunks(squares, [], workers=2) == []


def test_a_shared_worker_pool_runs_several_calls_in_input_order():
    items = list(range(40))
    with worker_pool(2) as pool:
        for _ in range(2):
            assert map_chunks(squares_early_chunks_slow, items, workers=2, progress=False, pool=pool) == \
                [x * x for x in items]
            pids = set(map_chunks(worker_pid, items, workers=2, progress=False, pool=pool))
            # every chunk ran in the pool's own processes (it starts them on demand), not in a pool of the call's
            assert pids <= set(pool._processes) and len(pool._processes) <= 2 and os.getpid() not in pids
    with worker_pool(1) as pool:
        assert pool is None
        assert map_chunks(squares, items, workers=1, pool=pool) == [x * x for x in items]


@pytest.mark.parametrize("shared_pool", [False, True])
def test_an_error_in_a_chunk_propagates_and_no_chunk_is_left_running(tmp_path, shared_pool):
    items = [(str(tmp_path), i) for i in range(32)]

    def started_and_done():
        names = {p.name for p in tmp_path.iterdir()}
        return ({n.split("-")[1] for n in names if n.startswith("start-")},
                {n.split("-")[1] for n in names if n.startswith("done-")})
    with worker_pool(2) as pool:
        with pytest.raises(ValueError, match="chunk 0 failed"):
            map_chunks(marking, items, workers=2, progress=False, pool=pool if shared_pool else None)
        started, done = started_and_done()  # while a shared pool is still open
        assert "0" in started and started - {"0"} == done
        if shared_pool:  # the pool survives the error for the next call
            assert map_chunks(squares, [1, 2, 3], workers=2, progress=False, pool=pool) == [1, 4, 9]
    assert started_and_done() == (started, done)  # nothing was left to start later


def test_an_error_in_the_calling_process_propagates():
    def failing(chunk):
        raise KeyError(chunk[0])
    with pytest.raises(KeyError):
        map_chunks(failing, [1, 2], workers=1)
