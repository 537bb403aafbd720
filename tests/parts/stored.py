"""Helpers the tests of the engine's parts share: a real store on a SQLite file, the
backends by name, and the answers a plain scan of the store's vectors gives."""

from __future__ import annotations

import logging
import os
import sqlite3

import numpy as np
import pytest

from embeddable_db.engine.sqlite import database_name
from embeddable_db.engine.sqlite.index_files import IndexFiles
from embeddable_db.engine.sqlite.live_view import LiveView
from embeddable_db.engine.sqlite.store import EmbeddingStore, VectorRow

from .vectors import exact_answer, unit_vectors

DIM = 16
MODEL = "m"


def annoy(dim: int):
    module = pytest.importorskip("embeddable_db.backends.annoy")
    return module.AnnoyVectorIndex(dim, n_trees=2)


def faiss_flat(dim: int):
    module = pytest.importorskip("embeddable_db.backends.faiss")
    return module.FaissVectorIndex(dim)


BACKENDS = {"annoy": annoy, "faiss": faiss_flat}


def row(record_id, vector=None, *, kind="note", model=MODEL, seed=0, version=1):
    if vector is None:
        vector = unit_vectors(1, DIM, seed=seed)[0]
    return VectorRow(record_id, kind, "", vector, "h", model, version)


def rows(n, *, start=0, seed=0, prefix="r", kind="note", model=MODEL):
    vectors = unit_vectors(n, DIM, seed=seed)
    return [row(f"{prefix}{start + i}", vectors[i], kind=kind, model=model) for i in range(n)]


class Connections:
    """sqlite3 connections to one file, all closed at the end of the test."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.opened: list[sqlite3.Connection] = []

    def store(self) -> EmbeddingStore:
        conn = sqlite3.connect(self.path)
        self.opened.append(conn)
        store = EmbeddingStore(conn)
        store.ensure_schema()
        return store

    def close(self) -> None:
        for conn in self.opened:
            conn.close()


def view_of(store: EmbeddingStore, backend: str = "faiss", model: str = MODEL) -> LiveView:
    view = LiveView(store, model, BACKENDS[backend])
    view.live = view.rebuild()
    return view


def expected(store: EmbeddingStore, query, k, *, model=MODEL, dim=DIM, kind=None):
    """(record ids, distances) a brute-force scan of the committed vectors answers."""
    labels, matrix = store.live_vectors(model, dim)
    info = {label: (rid, kd) for label, rid, kd, *_ in store.mapping(model, dim)}
    keep = [i for i, label in enumerate(labels.tolist()) if kind is None or info[label][1] == kind]
    if not keep:
        return [], []
    found, distances = exact_answer(labels[keep], matrix[keep], query, k)
    return [info[int(label)][0] for label in found], list(distances)


def assert_answers_match_store(live, store, queries, k=8, *, model=MODEL, kind=None):
    for query in queries:
        hits = live.search(query, k, kind=kind)
        ids, distances = expected(store, query, k, model=model, kind=kind)
        assert [rid for rid, _ in hits] == ids
        np.testing.assert_allclose([d for _, d in hits], distances, atol=1e-5)


def queries(n=6, seed=99):
    return list(unit_vectors(n, DIM, seed=seed))


def files_for(
    store: EmbeddingStore, folder, *, backend: str = "faiss", model: str = MODEL,
    read_only: bool = False, allow_model_change: bool = False, name: str = "index",
) -> IndexFiles:
    """The index files at ``folder/name.<backend>`` and ``folder/name.meta.json``, named for
    ``store`` as the engine names them."""
    os.makedirs(folder, exist_ok=True)
    return IndexFiles(
        store, os.path.join(folder, f"{name}.{backend}"),
        os.path.join(folder, f"{name}.meta.json"),
        database=database_name(store.conn, store.table), model_id=model, backend_name=backend,
        new_backend=BACKENDS[backend], embedding_version=1,
        allow_model_change=allow_model_change, read_only=read_only,
    )


def save(view: LiveView, files: IndexFiles) -> None:
    """What a flush does: compact, then write under the lock."""
    with files.locked():
        view.sync()
        view.compact()
        files.write(view.live)


def folder_bytes(folder) -> dict[str, bytes]:
    """Every file in ``folder`` and its bytes: what a caller would see changed."""
    found = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as handle:
            found[name] = handle.read()
    return found


def saved(store, folder, backend="faiss", n=20):
    """A store of ``n`` vectors (two kinds), its view, and its files written."""
    store.upsert(rows(n, seed=1) + rows(5, start=n, seed=2, kind="faq"))
    store.remove(["r3"])
    view = view_of(store, backend)
    files = files_for(store, folder, backend=backend)
    save(view, files)
    return view, files


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def load_with_warning(files, caplog, dim=DIM):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embeddable_db"):
        result = files.load(dim)
    return result, warnings_of(caplog)


def replace_file(path: str, data: bytes) -> None:
    """Put a new file (a new inode) at ``path``, as a user's editor or copy would."""
    with open(path + ".new", "wb") as handle:
        handle.write(data)
    os.replace(path + ".new", path)


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
