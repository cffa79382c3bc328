"""Process-parallel map with a progress bar, used by the data-stage steps.

Work is cut into contiguous chunks so each task amortises process overhead; results come back in input order,
which keeps every output independent of the number of workers.
"""

import contextlib
import itertools
import os
from concurrent.futures import ProcessPoolExecutor, wait

from tqdm import tqdm


def default_workers():
    return max(1, min(os.cpu_count() or 1, 8))


def chunked(items, n_chunks):
    items = list(items)
    n_chunks = max(1, min(n_chunks, len(items)))
    size, extra = divmod(len(items), n_chunks)
    out, start = [], 0
    for i in range(n_chunks):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


@contextlib.contextmanager
def worker_pool(workers):
    """A process pool for several map_chunks calls in a row (None for one worker).

    Starting and joining processes costs milliseconds per call; a step that maps twice pays it once this way.
    """
    workers = max(1, int(workers or 1))
    if workers == 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield pool


def map_chunks(fn, items, workers=1, desc=None, progress=True, chunks_per_worker=8, unit="img", pool=None):
    """Apply fn(list_of_items) -> list_of_results over chunks of items; return the flat, ordered results.

    pool: a worker_pool(workers) to run in instead of starting one for this call.
    """
    items = list(items)
    if not items:
        return []
    workers = max(1, int(workers or 1))
    n_chunks = 1 if workers == 1 and not progress else workers * chunks_per_worker
    chunks = chunked(items, n_chunks)
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, leave=False, dynamic_ncols=True)
    results = []
    try:
        if workers == 1:
            for chunk in chunks:
                results.append(fn(chunk))
                bar.update(len(chunk))
        else:
            with contextlib.ExitStack() as stack:
                if pool is None:
                    pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
                futures = [pool.submit(fn, chunk) for chunk in chunks]
                try:
                    for chunk, fut in zip(chunks, futures):
                        results.append(fut.result())
                        bar.update(len(chunk))
                except BaseException:
                    # No chunk of this call may still be writing when the caller cleans up after the error, also
                    # when the pool outlives this call.
                    for fut in futures:
                        fut.cancel()
                    wait(futures)
                    raise
    finally:
        bar.close()
    return list(itertools.chain.from_iterable(results))
