"""Backfill: embed what is missing, re-embed what is stale, drop vectors of vanished records.

It reads the subclass's records a window at a time (``WINDOW_BATCHES`` batches), compares each
with the state stored beside its vector (``Engine.states_of``), and embeds the window in
batches of similar text length, shortest first: a batch of texts of similar length pads less,
which made the default model ~25% faster on 5,000 mixed docstring sentences
(bench_backfill.py). Each batch is one model call and one committed write, so a killed backfill
resumes where it stopped. A record that fails is reported and skipped.

The store's lock is held while records are read and while a batch is written, never during a
model call: other threads search and write meanwhile. A vector another writer changed while
its batch was being encoded is left as that writer made it (the batch's was made from what the
record said before); the next backfill judges it again. A dry run (``plan``) counts the same
decisions without calling the model.

A record whose vector is current but has no keyword row (a store made before the keyword
index, migrated on open) gets its text written to the keyword index, ``FILL_CHUNK`` records per
committed write, with no model call: its text hash shows the vector was made from that text.

A store that records its own changes (``TableStore``: triggers append the keys of changed rows
to a table) gives ``Source.only``, the keys changed since its last backfill, and yields only
their records; ``Source.completed`` lets it forget those changes once the run has finished.
Every other store is walked in full, as above.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from . import validation as check
from .encoding import Failure, Pending, fingerprint
from .engine import Engine
from .errors import EmbeddingError, InvalidInputError
from .reports import BackfillConnectionLost, BackfillInterrupted, BackfillPlan, BackfillResult
from .rows import StoredState, VectorRow

log = logging.getLogger(__name__)

#: Records are read this many batches ahead and batched by text length.
WINDOW_BATCHES = 16
#: Progress is told every this many records read, embedded or not: a no-op backfill of 1M
#: records reads for seconds without a batch to report.
READ_TICK = 20_000
#: Keyword rows filled (without the model) per committed write.
FILL_CHUNK = 2_000


@dataclass(frozen=True)
class Source:
    """What a backfill needs from the store it fills: its records and how to embed them."""

    records: Callable[[], Iterable[tuple[Any, Any, str]]]
    text_of: Callable[[Any], Any] | None  #: ``embedding_text``, None for ``vector()`` records
    kinds: tuple[str, ...] | None
    model_id: str
    embedding_version: int
    #: Vectors for fingerprinted items; an item that fails is added to the failures instead.
    embed: Callable[[list[Pending], list[Failure]], list[VectorRow]]
    #: Set by a store that records its own changes (``TableStore``'s triggers): the only keys
    #: whose records may differ from their vectors. ``records`` then yields (some of) these
    #: keys alone, and vanished records are looked for among them, so a backfill after no
    #: change reads nothing. None: every record is read.
    only: Collection[str] | None = None
    #: Called with the result once a backfill has run to its end (not a dry run or a plan,
    #: not an interrupted run): such a store may then forget the changes it handed over,
    #: except those of the keys also given, whose vectors another writer changed while this
    #: run encoded them (what that writer wrote may be older than the record).
    completed: Callable[[BackfillResult, list[str]], None] | None = None
    #: Of these keys (the run's orphans), those that still name no record, read inside the
    #: transaction that removes their vectors: a record that came back meanwhile keeps its
    #: vector, which another run may already have judged current. None: all of them.
    still_gone: Callable[[list[str]], list[str]] | None = None


@dataclass(frozen=True, slots=True)
class Planned:
    """A record to embed, and the stored state it was judged against."""

    item: Pending
    state: StoredState | None


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block is done, then deliver it.

    A backfill commits a batch and then counts it; a KeyboardInterrupt raised between the two
    (SQLite's commit can take milliseconds when it checkpoints the WAL) left the summary short
    of what SQLite holds. Only the main thread receives signals; elsewhere this does nothing.
    """
    handler = signal.getsignal(signal.SIGINT)
    held: list[Any] = []
    holding = callable(handler) and threading.current_thread() is threading.main_thread()
    if holding:  # else SIG_IGN, SIG_DFL or not Python's to hold
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        if holding:
            signal.signal(signal.SIGINT, handler)
            if held:
                handler(signal.SIGINT, held[0])


def plan(engine: Engine, source: Source) -> BackfillPlan:
    """What ``run`` would do now, without calling the model or writing anything."""
    walk = _Walk(engine, source)
    while len(walk.next_window(WINDOW_BATCHES * 100)) == WINDOW_BATCHES * 100:
        pass
    walk.plan.orphaned = len(walk.orphans())
    return walk.plan


def dry_run(engine: Engine, source: Source) -> BackfillResult:
    """``plan`` told as the counts a backfill reports (``dry_run=True``)."""
    started = time.perf_counter()
    planned = plan(engine, source)
    return BackfillResult(
        embedded=planned.missing, reembedded=planned.stale, removed=planned.orphaned,
        unchanged=planned.unchanged, failed=planned.failed, failures=planned.failures,
        seconds=time.perf_counter() - started, dry_run=True,
        last_record_id=planned.last_key, keyword_filled=planned.keyword_missing,
    )


def run(
    engine: Engine,
    source: Source,
    *,
    batch_size: int,
    progress: Callable[[BackfillResult], None] | None = None,
) -> BackfillResult:
    """Embed, re-embed and remove as the module docstring says; the last step saves the index."""
    if engine.in_transaction():
        raise EmbeddingError(
            "commit or roll back the open transaction before backfill_embeddings(): it "
            "commits batch by batch"
        )
    result = BackfillResult()
    started = time.perf_counter()
    limit = batch_size * WINDOW_BATCHES
    skipped: list[str] = []  # rewritten by another writer while their batch was encoded

    def counted() -> None:
        result.unchanged = walk.plan.unchanged + len(skipped)
        result.failed = len(result.failures)
        result.last_record_id = walk.plan.last_key

    def read_on() -> None:  # a long stretch of current records is reported as it is read
        counted()
        if progress:
            progress(result)

    def fill(items: list[tuple[str, str, str]]) -> None:
        with engine.lock, ctrl_c_held():  # committed and counted, or neither
            result.keyword_filled += engine.fill_keywords(items)

    walk = _Walk(engine, source, result.failures, read_on, fill)
    # A store that forgets its logged changes once a run ends (``completed``) must not keep
    # a vector older than its record: see ``_embed_batch``. Others are walked in full again.
    began = walk.through_seq if source.completed is not None else None
    try:
        with engine.bulk_load():  # PostgreSQL: a first load builds its index after
            while True:
                window = walk.next_window(limit)
                final = len(window) < limit
                window.sort(key=lambda planned: len(planned.item.text or ""))  # stable
                for start in range(0, len(window), batch_size):
                    skipped += _embed_batch(engine, source, window[start : start + batch_size],
                                            result, began)
                    counted()
                    if progress and not (final and start + batch_size >= len(window)):
                        progress(result)
                counted()
                if final:
                    break
            walk.fill_now()
            gone = walk.orphans()
            with engine.lock:
                if gone:  # not a vector another writer made, nor one of a record come back
                    with engine.transaction():
                        if source.still_gone is not None:
                            gone = source.still_gone(gone)
                        removed = engine.remove(gone, through_seq=walk.through_seq) if gone else ()
                    result.removed = len(removed)
                engine.settle()  # inside: Ctrl-C while saving is reported the same way
            if source.completed is not None:
                counted()
                source.completed(result, skipped)
    except KeyboardInterrupt as exc:
        result.interrupted = True
        result.seconds = time.perf_counter() - started
        counted()
        raise BackfillInterrupted(result) from exc
    except Exception as exc:
        if not engine.lost_connection(exc):
            raise
        result.seconds = time.perf_counter() - started
        counted()
        raise BackfillConnectionLost(result, exc) from exc
    result.seconds = time.perf_counter() - started
    if progress:
        progress(result)
    return result


def _embed_batch(engine: Engine, source: Source, batch: list[Planned], result,
                 began: int | None) -> list[str]:
    """One model call (no lock held) and one committed write (under the lock); returns the
    keys whose vectors were left alone because another writer changed them meanwhile.

    With ``began`` (the walk's ``last_seq()`` at its start), "meanwhile" is since then, not
    only since the state was read: a record is read before its stored state, so a vector
    another writer made between the two, from a newer text, would look like the state the
    batch was judged against. The check and the write are one transaction (SQLite: BEGIN
    IMMEDIATE), so no other process writes between them."""
    failures: list[Failure] = []
    rows = source.embed([planned.item for planned in batch], failures)
    for key, error in failures:
        result.failures.append((key, str(error)))
        log.warning("backfill: record %r failed: %s", key, error)
    if not rows:
        return []
    judged = {planned.item.key: planned.state for planned in batch}
    keys = [row.record_id for row in rows]
    # PostgreSQL refuses a backfill inside a transaction (its batches must commit); tracked
    # stores (``began``) are SQLite files, where BEGIN IMMEDIATE joins the check to the write.
    with engine.lock, ctrl_c_held():  # committed and counted, or neither
        with engine.transaction() if began is not None else nullcontext():
            now = engine.states_of(keys)
            late = engine.written_since(keys, began) if began is not None else set()
            fresh = [row for row in rows if now.get(row.record_id) == judged[row.record_id]
                     and row.record_id not in late]
            if fresh:
                engine.write(fresh, bulk=True)  # the index is built once, by the final flush
        for row in fresh:
            if judged[row.record_id] is None:
                result.embedded += 1
            else:
                result.reembedded += 1
        if fresh:
            result.last_committed_id = fresh[-1].record_id
    written = {row.record_id for row in fresh}
    return [row.record_id for row in rows if row.record_id not in written]


class _Walk:
    """The records read so far, judged against what is stored beside their vectors."""

    def __init__(
        self,
        engine: Engine,
        source: Source,
        failures: list[tuple[str, str]] | None = None,
        read_on: Callable[[], None] | None = None,
        fill: Callable[[list[tuple[str, str, str]]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.source = source
        self._fill = fill  # writes keyword rows; None: only count them (a plan)
        self._fills: list[tuple[str, str, str]] = []  # (key, digest, text) to write
        self._read_on = read_on  # called every READ_TICK records read
        self._ticked = 0
        self.plan = BackfillPlan(failures=[] if failures is None else failures)
        self.seen: set[str] = set()
        self._kinds: set[str] = set()  # kinds already checked
        self.with_vector = 0  # records read that had a vector when read
        with engine.lock:
            self.through_seq = engine.last_seq()  # vectors written later are never orphans
            self._records = iter(source.records())

    def next_window(self, limit: int) -> list[Planned]:
        """Up to ``limit`` records to embed (fewer only when the records are exhausted)."""
        window: list[Planned] = []
        while len(window) < limit:
            with self.engine.lock:  # taken per chunk: a long scan of current records lets
                read = self._read(min(limit - len(window), 1_000))  # others in between
                if not read:
                    break
                states = self.engine.stale_states(
                    [(item[0], item[3], item[2]) for item in read],
                    self.source.model_id, self.source.embedding_version,
                )
            for item in read:
                if item[0] not in states:  # current, keyword row and all
                    self.plan.unchanged += 1
                    self.with_vector += 1
                    continue
                self.with_vector += states[item[0]] is not None
                planned = self._judge(item, states[item[0]])
                if planned is not None:
                    window.append(planned)
            if len(self._fills) >= FILL_CHUNK:
                self.fill_now()
            if self._read_on is not None and len(self.seen) - self._ticked >= READ_TICK:
                self._ticked = len(self.seen)
                self._read_on()
        return window

    def _read(self, n: int) -> list[tuple]:
        """The next ``n`` distinct, readable records as (key, record, kind, digest, text)."""
        source, plan, seen, kinds = self.source, self.plan, self.seen, self._kinds
        found: list[tuple] = []
        for record_id, record, kind in self._records:
            try:
                key = check.record_key(record_id)
                if type(kind) is not str or kind not in kinds:  # each kind is checked once
                    kinds.add(check.check_kind(kind, source.kinds))
            except (InvalidInputError, TypeError) as exc:  # TypeError: an unhashable kind
                if isinstance(exc, TypeError):
                    exc = InvalidInputError(f"kind must be a non-empty str, got {kind!r}")
                plan.failed += 1
                plan.failures.append((repr(record_id), str(exc)))
                continue
            if key in seen:
                continue
            seen.add(key)
            try:
                digest, text = fingerprint(record, source.text_of)
            except Exception as exc:  # noqa: BLE001 - one bad record is reported, not fatal
                plan.failed += 1
                plan.failures.append((key, str(exc)))
                continue
            found.append((key, record, kind, digest, text))
            if len(found) >= n:
                break
        plan.records = len(seen)
        if found:
            plan.last_key = found[-1][0]
        return found

    def _judge(self, item: tuple, state: StoredState | None) -> Planned | None:
        """The record to embed, or None (counted unchanged) when its vector is current."""
        plan, source = self.plan, self.source
        key, record, kind, digest, text = item
        if state is None:
            plan.missing += 1
        elif state.text_hash != digest:
            plan.stale_text += 1
        elif state.model != source.model_id:
            plan.stale_model += 1
        elif state.embedding_version < source.embedding_version:
            plan.stale_version += 1
        elif state.kind != kind:
            plan.stale_kind += 1  # searched by kind: the vector must follow its record
        else:
            plan.unchanged += 1
            if not state.keyword and text is not None:
                plan.keyword_missing += 1
                if self._fill is not None:
                    self._fills.append((key, digest, text))
            return None
        # Whatever is stored beside the vector survives re-embedding.
        source_id = state.source_id if state is not None else ""
        return Planned(Pending(key, record, kind, source_id, digest, text), state)

    def fill_now(self) -> None:
        """Write the keyword rows judged missing so far."""
        if self._fills and self._fill is not None:
            self._fill(self._fills)
        self._fills = []

    def orphans(self) -> list[str]:
        """Stored vectors (as of the walk's start) whose records were not read; for a store
        that says which keys changed (``Source.only``), only those keys are looked at. A walk
        that read a record for every stored key, with no write since it began, skips the
        look through every stored key (1 s of a 1M no-op backfill)."""
        only = self.source.only
        if only is not None:
            unseen = [key for key in only if key not in self.seen]
            return sorted(self.engine.states_of(unseen)) if unseen else []
        with self.engine.lock:  # nothing written since the walk began, and every stored key
            if (self.engine.last_seq() == self.through_seq  # was read: none can be an orphan
                    and self.engine.stored_count() == self.with_vector):
                return []
        return self.engine.unseen_keys(self.seen, self.through_seq)
