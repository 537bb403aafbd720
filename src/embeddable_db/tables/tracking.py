"""A backfill that reads only what a change log recorded: what ``TableStore`` and the six
databases share.

``ChangeTracking`` goes before ``EmbeddableDBMixin`` among a store's bases. The store sets
``_log`` (a ``ChangeLog``, or None when its changes cannot be tracked: a read-only open,
another engine, vectors in another file) and gives ``_change_basis()`` (what the vectors are
made with: a full scan under another basis does not vouch for them) and ``_records_of(keys)``
(the records of those keys that exist, as ``iter_records`` would yield them). Then
``backfill_embeddings()`` reads only the records whose keys the triggers logged, unless
``full=True`` or the log cannot be trusted (``changes.py``), when it reads every record and
compares hashes, as every other store does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from .. import validation as check
from ..errors import InvalidInputError
from ..reports import BackfillPlan, BackfillResult
from .changes import ChangeLog


class ChangeTracking:
    """Backfill, plan and the change log's state for a store with a ``ChangeLog``."""

    _log: ChangeLog | None = None
    _full_scan = False

    def _change_basis(self) -> dict[str, Any]:
        raise NotImplementedError

    def _records_of(self, keys: list[str]) -> Iterator[tuple[Any, Any, str]]:
        raise NotImplementedError

    def _log_in_place(self) -> None:
        """(Re)install triggers dropped or altered since the store opened (their log starts
        now, so this backfill is a full scan); else log the rows appended above the high mark
        (``changes.py``), so that the log holds every change before the backfill reads it."""
        if self._log is not None and not self.conn.in_transaction:
            with self.embedding_transaction():
                if not self._log.in_place():
                    self._log.install()
                else:
                    self._log.catch_up()

    def backfill_embeddings(
        self,
        batch_size: int = 100,
        *,
        dry_run: bool = False,
        progress: Callable[[BackfillResult], None] | None = None,
        full: bool = False,
    ) -> BackfillResult:
        """The mixin's backfill over the records the triggers logged as changed since the last
        one; every record (a hash scan) when ``full``, without triggers, or when the change
        log cannot be trusted (``tables/changes.py`` says when)."""
        self._ensure_open(write=None if dry_run else "backfill_embeddings()")
        if not dry_run:
            self._log_in_place()
        self._full_scan = bool(full)
        try:
            return super().backfill_embeddings(batch_size, dry_run=dry_run, progress=progress)
        finally:
            self._full_scan = False

    def backfill_plan(self, *, full: bool = False) -> BackfillPlan:
        """What ``backfill_embeddings(full=full)`` would do now, without the model."""
        self._full_scan = bool(full)
        try:
            return super().backfill_plan()
        finally:
            self._full_scan = False

    def changes_trusted(self) -> bool:
        """Whether the next backfill may read only the records the triggers logged."""
        self._ensure_open()
        with self.embedding_lock:
            return self._log is not None and self._log.trusted(self._change_basis())

    def pending_changes(self) -> int | None:
        """How many records the triggers logged as changed since the last backfill (None when
        the next backfill must read every record)."""
        if not self.changes_trusted():
            return None
        with self.embedding_lock:
            assert self._log is not None
            return len(set(self._log.pending()[1]))

    def _backfill_source(self):
        source = super()._backfill_source()
        log = self._log
        if log is None:
            return source
        with self.embedding_lock:
            basis = self._change_basis()
            through, raw = log.pending()
            if self._full_scan or not log.trusted(basis):
                return dataclasses.replace(
                    source, still_gone=self._still_gone,
                    completed=lambda result, redo: self._completed(through, result, redo, basis),
                )
        keys: list[str] = []
        for value in dict.fromkeys(raw):
            try:
                keys.append(check.record_key(value))
            except InvalidInputError:  # a NULL or a float key names no record
                continue
        keys = list(dict.fromkeys(keys))
        return dataclasses.replace(
            source, records=lambda: self._records_of(keys), only=keys, still_gone=self._still_gone,
            completed=lambda result, redo: self._completed(through, result, redo, None),
        )

    def _still_gone(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` that name no record now (``backfill.Source.still_gone``)."""
        present = {check.record_key(raw) for raw, _, _ in self._records_of(keys)}
        return [key for key in keys if key not in present]

    def _completed(self, through: int, result: BackfillResult, redo: list[str],
                   basis: dict | None) -> None:
        """Forget what the run handled; failed records, and those whose vectors another
        writer changed meanwhile (``backfill.Source.completed``), stay for the next run."""
        assert self._log is not None
        with self.embedding_transaction():
            self._log.acknowledge(through, [key for key, _ in result.failures] + redo, basis)
