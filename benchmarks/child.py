"""Fresh-process probes for the cold-open and memory benchmarks; each prints one JSON line.

    child.py baseline <backend>           imports what a store needs, opens nothing
    child.py open <backend> <folder> [n]  opens the store and answers one search_by_vector
                                          (then n more, for the memory figure)
    child.py raw <backend> <index file>   the library alone loads the index file and searches
    child.py pg_open <conninfo>           opens bench_postgres's 100k store on PostgreSQL and
                                          answers one search_by_vector
    child.py backfill <backend> <folder> <n>   backfills n text records with hash:384
    child.py notes <backend> <db file>    opens bench_scale_backfill's notes store, answers one
                                          search, then 200 more (for the memory figure)
    child.py notes_backfill <backend> <db file>   says "ready" once that store is open, then
                                          backfills it (bench_scale_crash kills it midway)
    child.py notes_rebuild <backend> <db file>    opens that store, times rebuild_index()

Only what each probe needs is imported, so ``raw`` never pays for embeddable_db.
"""

from __future__ import annotations

import json
import resource
import sys
import time

DIM = 384


def query():
    import numpy as np

    vector = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def baseline(backend: str) -> dict:
    import embeddable_db  # noqa: F401

    __import__("faiss" if backend in ("faiss", "hnsw") else "annoy")
    return {}


def open_store(backend: str, folder: str, more: str = "0") -> dict:
    from pathlib import Path

    from common import open_store as open_bench_store

    started = time.perf_counter()
    store = open_bench_store(Path(folder), backend)
    opened = time.perf_counter()
    hits = store.search_by_vector(query(), 10)
    searched = time.perf_counter()
    answered = time.time()
    assert len(hits) == 10
    _more_searches(store, int(more))
    return {"answered_at": answered, "open_s": opened - started, "search_s": searched - opened,
            "torch": "torch" in sys.modules}


def pg_open(conninfo: str) -> dict:
    from common import PRECOMPUTED, PgStore

    started = time.perf_counter()
    store = PgStore(conninfo, model_name=PRECOMPUTED)
    opened = time.perf_counter()
    hits = store.search_by_vector(query(), 10)
    searched = time.perf_counter()
    answered = time.time()
    assert len(hits) == 10
    return {"answered_at": answered, "open_s": opened - started, "search_s": searched - opened}


def _more_searches(store, n: int) -> None:
    """``n`` more searches of random vectors (for the memory figure: what searching touches)."""
    import numpy as np

    rng = np.random.default_rng(2)
    for _ in range(n):
        vector = rng.normal(size=DIM).astype(np.float32)
        store.search_by_vector(vector / np.linalg.norm(vector), 10)


def notes(backend: str, path: str) -> dict:
    from bench_scale_backfill import Notes

    started = time.perf_counter()
    store = Notes(path, model_name="hash:384", backend="faiss" if backend == "hnsw" else backend,
                  **({"index_type": "hnsw"} if backend == "hnsw" else {}))
    opened = time.perf_counter()
    assert len(store.search_by_vector(query(), 10)) == 10
    searched = time.perf_counter()
    answered = time.time()
    _more_searches(store, 200)
    return {"answered_at": answered, "open_s": opened - started, "search_s": searched - opened,
            "torch": "torch" in sys.modules}


def notes_backfill(backend: str, path: str) -> dict:
    from bench_scale_backfill import Notes

    started = time.perf_counter()
    store = Notes(path, model_name="hash:384", backend=backend)
    opened = time.perf_counter()
    print("ready", flush=True)
    result = store.backfill_embeddings(batch_size=1_000)
    store.close()
    return {"open_s": opened - started, "backfill_s": time.perf_counter() - opened,
            "embedded": result.embedded, "unchanged": result.unchanged,
            "reembedded": result.reembedded, "removed": result.removed, "failed": result.failed}


def notes_rebuild(backend: str, path: str) -> dict:
    from bench_scale_backfill import Notes

    store = Notes(path, model_name="hash:384", backend=backend)
    started = time.perf_counter()
    store.rebuild_index()
    return {"rebuild_s": time.perf_counter() - started}


def raw(backend: str, path: str) -> dict:
    if backend == "annoy":
        from annoy import AnnoyIndex

        from embeddable_db.backends.annoy import DEFAULT_SEARCH_K

        index = AnnoyIndex(DIM, "angular")
        index.load(path)
        index.get_nns_by_vector(query(), 10, search_k=DEFAULT_SEARCH_K)
    else:
        import faiss

        index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)  # mapped, as the store loads it
        index.search(query().reshape(1, -1), 10)
    return {"answered_at": time.time()}


def backfill(backend: str, folder: str, n: str) -> dict:
    from itertools import cycle, islice
    from pathlib import Path

    from common import BenchStore, TimedEncoder, stdlib_texts

    from embeddable_db import get_encoder

    encoder = TimedEncoder(get_encoder("hash:384"))
    store = BenchStore(Path(folder) / "store.db", backend=backend, encoder=encoder)
    texts = (f"{text} ({i})" for i, text in enumerate(islice(cycle(stdlib_texts()), int(n))))
    store.add_texts(texts)
    started = time.perf_counter()
    result = store.backfill_embeddings(batch_size=1000)
    seconds = time.perf_counter() - started
    store.close()
    assert result.embedded == int(n), result
    return {"backfill_s": seconds, "encode_s": encoder.seconds}


def _high_water_mb() -> float:
    """VmHWM: the peak RSS of this process image since exec (ru_maxrss also counts the pages
    of a large parent that the fork shared before the exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    probe, *args = sys.argv[1:]
    probes = {"baseline": baseline, "open": open_store, "notes": notes, "raw": raw, "pg_open": pg_open,
              "backfill": backfill, "notes_backfill": notes_backfill,
              "notes_rebuild": notes_rebuild}
    out = probes[probe](*args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["hwm_mb"] = _high_water_mb()  # this image's own peak: ru_maxrss keeps a fork's
    out["torch_imported"] = "torch" in sys.modules
    print(json.dumps(out))


if __name__ == "__main__":
    main()
