"""``bench_postgres``'s migrate section: 100k records of a SQLite ``InformationDB`` moved to
PostgreSQL by ``embeddable_db.databases.migrate.migrate`` (what ``embeddable-db migrate`` runs).

Figures: records/s, and the model calls made by every store of this process meanwhile
(target 0: the vectors are copied, not made again). The source's vectors are the default
model's as far as the stores can tell: they are looked up by text, so building it (once,
cached under ``.cache/stores``) needs no model either.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from common import CACHE, figure, log, ratio, stdlib_texts, timed


class LookupEncoder:
    """The default model's vectors, looked up by text (the migrate source is made without the
    model)."""

    model_name = "all-MiniLM-L6-v2"

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return np.stack([self.vectors[text] for text in texts])


def migrate_source(vectors: np.ndarray) -> Path:
    """A data folder whose SQLite ``InformationDB`` holds one record per vector, with those
    vectors as the default model's (cached in ``.cache/stores``)."""
    from common import _source_digest

    from embeddable_db.databases import InformationDB, InformationRecord

    folder = CACHE / "stores" / f"migrate-information-{len(vectors)}-{_source_digest()}"
    if folder.exists():
        return folder
    building = folder.with_suffix(".tmp")
    shutil.rmtree(building, ignore_errors=True)
    texts = stdlib_texts()
    summaries = [f"{texts[i % len(texts)]} ({i})" for i in range(len(vectors))]
    lookup = {InformationRecord(data_type="report", summary=s).embedding_text(): v
              for s, v in zip(summaries, vectors, strict=True)}
    log(f"building the migrate source of {len(vectors):,} records (cached for later runs)")
    with InformationDB(data_dir=building, encoder=LookupEncoder(lookup)) as db:
        with db.conn:
            db.conn.executemany("INSERT INTO information (data_type, summary) VALUES (?, ?)",
                                [("report", s) for s in summaries])
        result = db.backfill_embeddings()
        assert result.embedded == len(vectors) and not result.failed, result
    for old in folder.parent.glob(f"migrate-information-{len(vectors)}-*"):
        if old != building:  # an earlier version's source
            shutil.rmtree(old)
    building.rename(folder)
    return folder


@contextmanager
def counted_model_calls():
    """Counts every text any store of this process asks its encoder for."""
    from embeddable_db.encoding import Encoding

    calls = {"calls": 0, "texts": 0}
    original = Encoding.encode_texts

    def counting(self, texts, dim):
        texts = list(texts)
        calls["calls"] += 1
        calls["texts"] += len(texts)
        return original(self, texts, dim)

    Encoding.encode_texts = counting
    try:
        yield calls
    finally:
        Encoding.encode_texts = original


def migrate(server, vectors: np.ndarray) -> None:
    """The migrate figures on ``server`` (a started ``LocalPostgres``)."""
    from embeddable_db.databases import InformationDB
    from embeddable_db.databases.migrate import migrate as migrate_databases

    source = migrate_source(vectors)
    url = server.url(server.create_database())
    with counted_model_calls() as calls:
        seconds, report = timed(lambda: migrate_databases(source, url, ["information"]))
    with InformationDB(url=url) as target:
        counts = target.count(), target.embedding_count()
    assert report.ok, report
    assert counts == (len(vectors), len(vectors)), f"after migrate: records, vectors = {counts}"
    figure(f"migrate: {len(vectors):,} records from SQLite to PostgreSQL", seconds, "s",
           f"{len(vectors) / seconds:,.0f} records/s")
    ratio("migrate model calls", calls["calls"], "0", calls["calls"] == 0)
