"""Where Annoy stops being slower than an exact scan: the curve behind ``exact_below``.

Real all-MiniLM-L6-v2 vectors (repeated with small noise past the 16k real ones, as in
``make bench``), the 500 held-out real queries, top 10. At each size: p50 of the exact numpy
scan the backend uses below ``exact_below`` (``exact_top_k``), and p50 and recall@10 of Annoy
with the defaults (10 trees, ``search_k`` by size: ``default_search_k``). Prints the crossover
it finds. The two run in alternating passes over the queries, so drift hits both.
"""

from __future__ import annotations

import numpy as np
from annoy import AnnoyIndex
from common import TOP_K, base_and_queries, exact_top_k, figure, latencies_ms, log, noisy_copies
from common import recall as recall_of

from embeddable_db.backends.annoy import DEFAULT_EXACT_BELOW, DEFAULT_TREES, default_search_k
from embeddable_db.backends.exact import exact_top_k as scan

SIZES = (10_000, 20_000, 40_000, 50_000, 60_000, 70_000, 80_000, 100_000)


def main() -> None:
    base, queries = base_and_queries()
    everything = noisy_copies(base, max(SIZES))
    curve = []
    for n in SIZES:
        matrix = np.ascontiguousarray(everything[:n])
        truth = exact_top_k(matrix, queries)
        log(f"building Annoy over {n:,}")
        index = AnnoyIndex(matrix.shape[1], "angular")
        for i, vector in enumerate(matrix):
            index.add_item(i, vector.tolist())
        index.build(DEFAULT_TREES, n_jobs=-1)
        search_k = max(default_search_k(n), TOP_K * DEFAULT_TREES)
        _, found = latencies_ms(  # as the backend asks: the query as a list
            lambda q, ix=index, sk=search_k: ix.get_nns_by_vector(q.tolist(), TOP_K, search_k=sk),
            queries,
        )
        times: dict[str, list[float]] = {"exact": [], "annoy": []}
        for which in ("exact", "annoy", "annoy", "exact"):  # side by side: drift hits both
            if which == "exact":
                ms, _ = latencies_ms(lambda q, m=matrix: scan(m, q, TOP_K), queries)
            else:
                ms, _ = latencies_ms(
                    lambda q, ix=index, sk=search_k: ix.get_nns_by_vector(
                        q.tolist(), TOP_K, search_k=sk), queries)
            times[which] += ms.tolist()
        exact_p50, annoy_p50 = float(np.median(times["exact"])), float(np.median(times["annoy"]))
        curve.append((n, exact_p50, annoy_p50))
        figure(f"n={n:,}: exact scan p50", exact_p50, "ms")
        figure(f"n={n:,}: annoy p50 (recall@10 {recall_of(found, truth):.3f})", annoy_p50, "ms")
        index.unload()
    faster = [n for n, exact, annoy in curve if annoy < exact]
    crossover = faster[0] if faster else None
    figure("smallest size where Annoy beats the exact scan", crossover or float("nan"), "",
           f"exact_below is {DEFAULT_EXACT_BELOW:,}")


if __name__ == "__main__":
    main()
