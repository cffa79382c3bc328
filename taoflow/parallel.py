"""Process-parallel map with a progress bar, used by the data-stage steps.

Work is cut into contiguous chunks so each task amortises process overhead; results come back in input order,
which keeps every output independent of the number of workers.
"""

import os
from concurrent.futures import ProcessPoolExecutor

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


def map_chunks(fn, items, workers=1, desc=None, progress=True, chunks_per_worker=8, unit="img"):
    """Apply fn(list_of_items) -> list_of_results over chunks of items; return the flat, ordered results."""
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
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(fn, chunk) for chunk in chunks]
                for chunk, fut in zip(chunks, futures):
                    results.append(fut.result())
                    bar.update(len(chunk))
    finally:
        bar.close()
    return [r for part in results for r in part]
