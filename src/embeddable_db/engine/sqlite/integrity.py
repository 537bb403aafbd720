"""What ``verify_index()`` checks beyond counts: every label, id and vector against SQLite.

Opening stays cheap: it trusts the manifest's own checksum (5 ms at 100k records), the index
file's sampled checksum and a few bounds (labels ascending and within SQLite's largest, FAISS's
stored ids equal to the manifest's labels: under 1 ms). A cross-check with SQLite at open would
read every page of the vector table, since the vectors sit in the same rows as the ids: 0.26 s
at 100k hash:384 vectors, on an open of ~0.35 s; even the (record_id, label) pairs of the
UNIQUE index alone took 0.095 s and say nothing of kinds or removals. ``verify_index()`` reads
everything instead: the whole index file against its sha256, the manifest's (label, record id,
kind) against SQLite, and every vector in the file against the one SQLite holds, which catches
one overwritten vector on Annoy, FAISS flat and FAISS HNSW (about 2-2.5 s at 100k, was ~1 s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ...backends import VectorIndex
from ...errors import CorruptIndexError
from ...reports import MODEL_SWITCH_PROBLEM
from .manifest import Manifest, file_checksum, file_digest

REPAIR = "run verify_index(repair=True) or rebuild_index() to rebuild it from SQLite"
_CHUNK = 10_000
_TOLERANCE = 1e-6  # the file and SQLite hold the same float32 values: any real damage is larger


def checked_labels(labels: np.ndarray, max_label: int) -> np.ndarray:
    """The manifest's labels as an array, if they can be SQLite's: ascending, none negative or
    beyond the largest label SQLite gave (~1 ms at 100k; OverflowError past 2**63). The
    checksum proved the manifest is the one written; this catches one forged consistently."""
    if labels[0] < 0 or labels[-1] > max_label or not (labels[1:] > labels[:-1]).all():
        raise CorruptIndexError("its metadata lists labels that are not SQLite's")
    return labels


def check_index_file(
    index_path: str, manifest: Manifest, new_backend: Callable[[int], VectorIndex]
) -> tuple[int | None, tuple[np.ndarray, np.ndarray] | None, str | None]:
    """(vectors in the file, its (labels, vectors) read back, a problem): the whole file is
    read against its sha256, so damage between the open-time samples is found too."""
    if manifest.count == 0:
        return 0, None, None
    try:
        if file_checksum(index_path) != (manifest.index_size, manifest.index_checksum):
            return None, None, f"index file {index_path} does not match its metadata checksum"
        if file_digest(index_path) != manifest.index_digest:
            return None, None, (
                f"index file {index_path} has changed since it was saved (its sha256 does not "
                f"match the metadata); {REPAIR}"
            )
        backend = new_backend(manifest.dim)
        backend.load(index_path, manifest.records.labels)
        return len(backend), backend.stored_items(), None
    except (OSError, ValueError, RuntimeError, OverflowError) as exc:
        return None, None, f"index file {index_path} cannot be read: {exc}"


#: How a half-switched store's problem starts, so that a caller with better advice (the CLI,
#: which knows the database's name) can put its own in its place.


def model_switch_problem(counts: dict[str, int], current: str | None) -> str | None:
    """A problem when SQLite holds vectors of several models (a re-embed stopped part way)."""
    if len(counts) < 2:
        return None
    made = ", ".join(f"{n} by {model!r}" for model, n in counts.items())
    return (
        f"{MODEL_SWITCH_PROBLEM} {len(counts)} models ({made}): a re-embed with another "
        "model stopped part way, and a search finds only one model's vectors; open the store "
        f"with model_name={current!r} and run backfill_embeddings() to finish it (on the "
        f"command line: embeddable-db backfill --model {current} --allow-model-change)"
    )


def live_problems(live: dict[int, tuple[str, str]], stored: dict[int, tuple[str, str]]) -> list[str]:
    """The in-memory index against SQLite: same labels, and each with the same id and kind."""
    problems = []
    missing = stored.keys() - live.keys()
    extra = live.keys() - stored.keys()
    if missing or extra:
        problems.append(
            f"live index holds {len(live)} vectors, SQLite {len(stored)} "
            f"({len(missing)} missing, {len(extra)} extra)"
        )
    wrong = [label for label in stored.keys() & live.keys() if live[label] != stored[label]]
    if wrong:
        label = min(wrong)
        problems.append(
            f"live index answers {len(wrong)} labels with another record than SQLite (label "
            f"{label}: {live[label][0]!r}, SQLite {stored[label][0]!r}); {REPAIR}"
        )
    return problems


def scan_problems(
    rows: Iterable[tuple],
    model: str,
    dim: int | None,
    manifest: Manifest | None,
    items: tuple[np.ndarray, np.ndarray] | None,
    index_path: str | None,
) -> tuple[dict[int, tuple[str, str]], dict[str, int], list[str]]:
    """One pass over SQLite's rows (``EmbeddingStore.scan``): the (record id, kind) of each live
    vector of ``model`` by label, how many vectors each model made (``model_counts``), and how
    the manifest and the index file's vectors (``items``, read back from the file) disagree
    with SQLite.

    Rows changed after the files were saved (``seq > synced_seq``) are not compared: opening
    replays them from SQLite.
    """
    stored: dict[int, tuple[str, str]] = {}
    counts: dict[str, int] = {}
    synced = manifest.synced_seq if manifest is not None else -1
    listed = manifest.records.pairs() if manifest else {}
    position: dict[int, int] = {}
    if items is not None:
        position = {label: i for i, label in enumerate(items[0].tolist())}
    missing = extra = 0
    wrong: list[int] = []
    damaged: list[tuple[int, str]] = []
    batch: list[tuple[int, str, int, bytes]] = []

    def compare(batch: list[tuple[int, str, int, bytes]]) -> None:
        in_sqlite = np.frombuffer(b"".join(r[3] for r in batch), "<f4").reshape(len(batch), -1)
        in_file = items[1][[r[2] for r in batch]]
        bad = np.flatnonzero(np.abs(in_file - in_sqlite).max(axis=1) > _TOLERANCE)
        damaged.extend((batch[i][0], batch[i][1]) for i in bad.tolist())

    for label, record_id, kind, row_model, row_dim, deleted, seq, blob in rows:
        live = not deleted and blob is not None
        if live:
            counts[row_model] = counts.get(row_model, 0) + 1
            if row_model == model and row_dim == dim:
                stored[label] = (record_id, kind)
        if manifest is None:
            continue
        entry = listed.pop(label, None)
        if seq > synced:
            continue
        if not (live and row_model == manifest.model and row_dim == manifest.dim):
            extra += entry is not None
        elif entry is None:
            missing += 1
        else:
            if entry != (record_id, kind):
                wrong.append(label)
            if label in position and len(blob) == 4 * items[1].shape[1]:
                batch.append((label, record_id, position[label], blob))
                if len(batch) == _CHUNK:
                    compare(batch)
                    batch = []
    if batch:
        compare(batch)
    extra += len(listed)  # labels SQLite never gave
    problems = []
    if missing or extra:
        problems.append(
            f"metadata lists {manifest.count} records: {missing} that SQLite held when it was "
            f"saved are missing and {extra} are not in SQLite; {REPAIR}"
        )
    if wrong:
        problems.append(
            f"metadata names another record or kind than SQLite for {len(wrong)} labels (first: "
            f"label {wrong[0]}), so search would answer with the wrong records; {REPAIR}"
        )
    if damaged:
        label, record_id = damaged[0]
        problems.append(
            f"index file {index_path} holds {len(damaged)} vectors that differ from SQLite's "
            f"(first: label {label}, record {record_id!r}); {REPAIR}"
        )
    counts = dict(sorted(counts.items(), key=lambda item: -item[1]))
    return stored, counts, problems
