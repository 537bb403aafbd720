"""The stores a server shows, opened once, read-only, with the model their vectors were
made by; and the searches and summaries the pages ask of them."""

from __future__ import annotations

import argparse
import dataclasses
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ..cli import hits as hits_out
from ..cli.stores import choose_models, find_targets, store_size
from ..databases import REGISTRY
from .views import DatabaseView, NotFound, table_views

MAX_TOP_K = 100
MAX_QUERY = 500
MODES = ("hybrid", "vector", "keyword")


class BadRequest(ValueError):
    """A request parameter the page refuses (shown as a 400 page with this reason)."""


class Stores:
    """Every database of a data directory that exists, and every embedded table of the
    given files, open read-only until ``close`` (each behind a view: ``views.py``)."""

    def __init__(self, data_dir: Path | None = None, files: Sequence[str] = (), *,
                 model_backend: str = "onnx", model: str | None = None, url: str | None = None,
                 read_url: str | None = None):
        """``url``: the six databases on PostgreSQL (those whose schema is there) instead of
        ``data_dir``'s files; ``read_url``: its hot standby, which then answers the searches."""
        self.views: dict[str, DatabaseView] = {}
        self.url = None
        if data_dir is not None or url is not None:
            args = argparse.Namespace(db=list(REGISTRY), data_dir=data_dir, backend=None,
                                      model=model, model_backend=model_backend, database_url=url,
                                      read_url=read_url, command="serve", prog="embeddable-db")
            targets = [t for t in find_targets(args) if t.exists]
            if url is not None:  # for the banner, its password hidden
                from ..databases.postgres import shown

                self.url = shown(url)
            models = choose_models(args, targets)
            for target in targets:
                self.views[target.name] = DatabaseView(target, args, models[target.name])
        for view in table_views(list(files), model_backend):
            self.views[view.name] = view
        self._stack = ExitStack()
        try:
            self._open_all()
        except BaseException:
            self._stack.close()
            raise
        self.lock = threading.Lock()  # one request at a time touches the connections

    def _open_all(self) -> None:
        for view in self.views.values():
            view.store = self._stack.enter_context(view.reopen(read_only=True))

    def backfill(self) -> str:
        """Embed what is missing or stale (``--allow-backfill`` only): each store opened
        writable for the run, then the read-only handles reopened to see the new vectors."""
        done = []
        with self.lock:
            self._stack.close()
            self._stack = ExitStack()
            for name, view in self.views.items():
                with view.reopen(read_only=False) as db:
                    result = db.backfill_embeddings()
                    done.append(f"{name}: {result.embedded} embedded")
            self._open_all()
        return ", ".join(done)

    def close(self) -> None:
        self._stack.close()

    def warm(self) -> None:
        """Load each model once (the first query then only encodes)."""
        with self.lock:
            for view in self.views.values():
                if view.store.embedding_count():
                    view.store.encode_texts(["warm up"])

    def kinds(self) -> list[str]:
        return sorted({k for view in self.views.values() for k in view.kinds})

    def _view(self, name: str) -> DatabaseView:
        view = self.views.get(name)
        if view is None:
            raise NotFound(f"there is no store {name!r}: the stores are {', '.join(self.views)}")
        return view

    def search(self, query: str, mode: str, top_k: int, kind: str | None,
               where: list[str]) -> list[tuple[str, Any, str]]:
        """Hits across stores, fused exactly as ``embeddable-db search`` fuses them."""
        if not query.strip():
            raise BadRequest("the query is empty: type the words to search for")
        if len(query) > MAX_QUERY:
            raise BadRequest(f"the query is {len(query)} characters long: at most {MAX_QUERY}")
        if mode not in MODES:
            raise BadRequest(f"unknown mode {mode!r}: choose hybrid, vector or keyword")
        if not 1 <= top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        views = list(self.views.values())
        if kind:
            if kind not in self.kinds():
                raise BadRequest(f"unknown kind {kind!r}: choose from {', '.join(self.kinds())}")
            views = [v for v in views if kind in v.kinds]
        try:
            filters = hits_out.parse_where([w for w in where if w.strip()] or None, "where:")
            if filters:
                names = hits_out.databases_with([v.name for v in views], set(filters),
                                                lambda n: self.views[n].field_sets(kind), "where:")
                views = [self.views[n] for n in names]
        except Exception as exc:  # UsageError: its message says what to change
            raise BadRequest(str(exc)) from None
        found: list[tuple[str, Any, str]] = []
        sides: list[Any] = []
        vectors: dict[str, Any] = {}
        with self.lock:
            for view in views:
                db = view.store
                if db.embedding_count() == 0:
                    continue
                q: Any = query
                if mode != "keyword":
                    if db.model_id not in vectors:
                        vectors[db.model_id] = db.encode_texts([query])[0]
                    q = vectors[db.model_id]
                try:
                    if mode == "hybrid":
                        sides.append(hits_out.both_sides(view, view.name, query, q, top_k,
                                                         kind=kind, where=filters))
                        continue
                    for hit in view.search(q, top_k, kind=kind, mode=mode, where=filters):
                        found.append((view.name, hit,
                                      " ".join(db.embedding_text(hit.record).split())))
                except ValueError as exc:
                    raise BadRequest(str(exc)) from None
        if mode == "hybrid":
            found = hits_out.fused_across(sides, top_k)
        return hits_out.merged(found, mode, top_k)

    def record(self, name: str, kind: str, rid: str) -> tuple[dict, dict, list]:
        """A record's fields, its vector's state, and its 10 nearest neighbours in its store,
        each neighbour with its text."""
        view = self._view(name)
        with self.lock:
            fields, key = view.record(kind, rid)
            db = view.store
            vector = db.get_vector(key)
            sql, live = vector_sql(db)
            row = sql.execute(f"SELECT model, embedding_version, updated_at FROM "
                              f"{db.embedding_table} WHERE record_id = ?{live}", (key,)).fetchone()
            state = {"vector": "yes" if vector is not None else "missing",
                     "model": row[0] if row else None, "version": row[1] if row else None,
                     "updated": row[2] if row else None,
                     "stale model": bool(row) and row[0] != db.model_id}
            near = []
            if vector is not None:
                hits = view.search(vector, 11, kind=None, mode="vector", where=None)
                near = [(h, " ".join(db.embedding_text(h.record).split()))
                        for h in hits if h.key != key][:10]
        return fields, state, near

    def summary(self) -> list[dict[str, Any]]:
        """Per store: the counts ``stats`` prints and the result of ``verify_index()``."""
        out = []
        with self.lock:
            for name, view in self.views.items():
                db = view.store
                plan = view.plan()
                report = db.verify_index()
                out.append({"name": name, "records": plan.records,
                            "vectors": db.embedding_count(), **plan_counts(plan),
                            "model": db.model_id, "backend": view.backend,
                            "index size": index_size(db),
                            "verify": "ok" if report.ok else "; ".join(report.problems)})
        return out

    def map_points(self, limit: int = 3000, seed: int = 0) -> list[dict[str, Any]]:
        """A 2-D PCA projection of up to ``limit`` vectors per store, sampled evenly."""
        points = []
        with self.lock:
            for name, view in self.views.items():
                db = view.store
                sql, live = vector_sql(db)
                keys = [k for (k,) in sql.execute(
                    f"SELECT record_id FROM {db.embedding_table} WHERE TRUE{live}")]
                if not keys:
                    continue
                rng = np.random.default_rng(seed)
                if len(keys) > limit:
                    keys = [keys[i] for i in sorted(rng.choice(len(keys), limit, replace=False))]
                vecs, kept = [], []
                for key in keys:
                    v = db.get_vector(key)
                    if v is not None:
                        vecs.append(v)
                        kept.append(key)
                if not vecs:
                    continue
                xy = pca2(np.asarray(vecs, dtype=np.float32))
                texts = view.texts(kept)
                for key, (x, y) in zip(kept, xy, strict=True):
                    kind, rid = view.locate(key)
                    text = " ".join(texts.get(key, "").split())[:160]
                    points.append({"store": name, "kind": kind, "id": rid, "x": float(x),
                                   "y": float(y), "text": text})
        return points


def pca2(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components of ``vectors``, scaled to [0, 1]."""
    centred = vectors - vectors.mean(axis=0)
    if len(vectors) < 2:
        return np.full((len(vectors), 2), 0.5)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 1))])
    low, high = xy.min(axis=0), xy.max(axis=0)
    return (xy - low) / np.where(high > low, high - low, 1.0)


def plan_counts(plan: Any) -> dict[str, int]:
    counts = dataclasses.asdict(plan) if dataclasses.is_dataclass(plan) else dict(vars(plan))
    def n(v: Any) -> int:
        return v if isinstance(v, int) else len(v) if hasattr(v, "__len__") else 0
    stale = sum(n(counts.get(k, 0)) for k in ("stale_text", "stale_model", "stale_version",
                                                "stale_kind"))
    return {"missing": n(counts.get("missing", 0)), "stale": stale,
            "orphaned": n(counts.get("orphaned", 0))}


def vector_sql(db: Any) -> tuple[Any, str]:
    """(what runs ``?`` SQL on a store's connection, the condition of a live vector row): on
    SQLite removed vectors are soft-deleted rows; PostgreSQL deletes them."""
    if getattr(db, "url", None) is not None:
        return db._sql, ""
    return db.conn, " AND deleted = 0"


def index_size(db: Any) -> int:
    if getattr(db, "url", None) is not None:  # PostgreSQL: the table with its indexes
        return store_size(db)
    path = getattr(db, "index_path", None)
    try:
        return Path(path).stat().st_size if path else 0
    except OSError:
        return 0
