"""Issue 6, part 5: peak memory of a cold open (part 4) and of a 100,000-record backfill.

Each figure is the peak RSS (``ru_maxrss``) of a fresh process (``child.py``). The baseline is a
fresh interpreter that imports embeddable_db and the backend's library and opens nothing; the
open store's cost is its peak above that, against the raw float32 bytes of its vectors.
The backfill uses the hashing fake encoder (``hash:384``), so the model's own memory is not in it.
Target: open store <= 2x the raw vector bytes above the baseline.
"""

from __future__ import annotations

import tempfile

from common import N_VECTORS, figure, ratio, run_child, vector_store, verdict

BACKENDS = ("annoy", "faiss")
DIM = 384
RAW_MB = N_VECTORS * DIM * 4 / 2**20


def main() -> None:
    figure(f"raw float32 bytes of {N_VECTORS:,} x {DIM} vectors", RAW_MB, "MiB")
    above = {}
    for backend in BACKENDS:
        _, base = run_child("baseline", backend)
        _, opened = run_child("open", backend, vector_store(backend))
        above[backend] = opened["peak_rss_mb"] - base["peak_rss_mb"]
        figure(f"{backend}: interpreter baseline (imports only)", base["peak_rss_mb"], "MiB")
        figure(f"{backend}: open 100k store + 1 search, peak", opened["peak_rss_mb"], "MiB")
        figure(f"{backend}:   above baseline", above[backend], "MiB",
               f"target <= {2 * RAW_MB:.0f} MiB: {verdict(above[backend] <= 2 * RAW_MB)}")
    with tempfile.TemporaryDirectory() as tmp:
        _, backfill = run_child("backfill", "annoy", tmp, N_VECTORS)
    figure(f"annoy: backfill of {N_VECTORS:,} records (hash:384), peak", backfill["peak_rss_mb"], "MiB")
    figure("annoy:   its time", backfill["backfill_s"], "s",
           f"{backfill['encode_s']:.1f} s of it inside the encoder")
    for backend in BACKENDS:
        value = above[backend] / RAW_MB
        ratio(f"open-store RSS above baseline / raw vector bytes, {backend}", value, "<= 2", value <= 2)


if __name__ == "__main__":
    main()
