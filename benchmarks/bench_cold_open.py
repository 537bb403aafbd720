"""Issue 6, part 4: a fresh process opens the 100,000-vector store and answers one search.

Each probe is a new interpreter (``child.py``). Its time to answer runs from spawning it to the
answer of its first ``search_by_vector``: interpreter start, imports, open and search (the
teardown after the answer is shown apart). The probe reports whether torch got imported.
Side by side, in alternation: the library alone mapping the same index file in a fresh process
and searching it. Medians of ROUNDS runs. Target: <= 0.5 s to answer, torch never imported.
"""

from __future__ import annotations

import statistics

from common import figure, open_store, ratio, run_child, vector_store, verdict

BACKENDS = ("annoy", "faiss")
ROUNDS = 5


def main() -> None:
    runs = {(b, probe): [] for b in BACKENDS for probe in ("open", "raw")}
    folders = {b: vector_store(b) for b in BACKENDS}
    index_files = {}
    for backend in BACKENDS:
        with open_store(folders[backend], backend) as store:
            index_files[backend] = store.index_path
        store.conn.close()
    for _ in range(ROUNDS):
        for backend in BACKENDS:
            runs[backend, "open"].append(run_child("open", backend, folders[backend]))
            runs[backend, "raw"].append(run_child("raw", backend, index_files[backend]))
    torch = any(report["torch_imported"] for r in runs.values() for _, report in r)

    def median(backend: str, probe: str, key: str | None = None) -> float:
        return statistics.median(report[key] if key else wall for wall, report in runs[backend, probe])

    figure("fresh interpreter importing embeddable_db, no store", run_child("baseline", "annoy")[0], "s")
    for backend in BACKENDS:
        answer = median(backend, "open", "answer_s")
        figure(f"{backend}: fresh process opens 100k store, answers 1 search", answer, "s",
               f"target <= 0.5 s: {verdict(answer <= 0.5)}")
        figure(f"{backend}:   of which open() inside the process", median(backend, "open", "open_s"), "s")
        figure(f"{backend}:   of which the first search_by_vector", median(backend, "open", "search_s"), "s")
        figure(f"{backend}:   process exit after the answer", median(backend, "open") - answer, "s")
        figure(f"{backend}: fresh process, library alone loads file, answers 1 search",
               median(backend, "raw", "answer_s"), "s")
    print(f"torch imported by a cold open: {torch}", flush=True)
    assert not torch, "opening a store and searching by vector imported torch"
    for backend in BACKENDS:
        value = median(backend, "open", "answer_s") / median(backend, "raw", "answer_s")
        ratio(f"store cold answer / library-alone cold answer, {backend}", value)


if __name__ == "__main__":
    main()
