"""What backfill and verify tell their caller."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EmbeddingError

#: How a verify problem about a half-done model switch begins (the CLI replaces its advice).
MODEL_SWITCH_PROBLEM = "the store holds vectors of"


@dataclass
class BackfillResult:
    """Counts of what one backfill did, and where it stopped if it was interrupted."""

    embedded: int = 0
    reembedded: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    last_record_id: str | None = None  # the last one read (batches run up to 16 batches behind)
    #: The last record whose vector was committed: what an interrupted backfill really kept.
    last_committed_id: str | None = None
    #: Records (counted unchanged) whose text was added to the keyword index without the model.
    keyword_filled: int = 0

    @property
    def processed(self) -> int:
        """Records looked at (vectors removed for vanished records are not records)."""
        return self.embedded + self.reembedded + self.unchanged + self.failed

    @property
    def committed(self) -> int:
        """Vectors written and committed (0 in a dry run, which writes nothing)."""
        return 0 if self.dry_run else self.embedded + self.reembedded


@dataclass
class BackfillPlan:
    """What a backfill would do now, counted record by record (nothing is encoded)."""

    records: int = 0  #: distinct record ids ``iter_records`` yielded
    missing: int = 0  #: records without a vector
    stale_text: int = 0  #: vector made from other text
    stale_model: int = 0  #: vector made by another model
    stale_version: int = 0  #: vector made for an older ``embedding_version``
    stale_kind: int = 0  #: the record's kind changed since
    unchanged: int = 0
    orphaned: int = 0  #: vectors whose record is gone
    failed: int = 0  #: records whose id, kind or text could not be had
    failures: list[tuple[str, str]] = field(default_factory=list)
    last_key: str | None = None  #: the last record read
    keyword_missing: int = 0  #: unchanged records whose text is not in the keyword index

    @property
    def stale(self) -> int:
        return self.stale_text + self.stale_model + self.stale_version + self.stale_kind


def _how_far(result: BackfillResult) -> str:
    if result.dry_run:
        return "a dry run: nothing was written"
    if result.last_committed_id is None:
        return "no batch was committed"
    return f"{result.committed} vectors committed, the last for record {result.last_committed_id!r}"


class BackfillInterrupted(KeyboardInterrupt):
    """Ctrl-C during a backfill: committed batches stay; ``result`` says how far it got."""

    def __init__(self, result: BackfillResult) -> None:
        super().__init__(f"backfill interrupted: {_how_far(result)} (records were read up to "
                         f"{result.last_record_id!r})")
        self.result = result


class BackfillConnectionLost(EmbeddingError):
    """The database went away during a backfill (a PostgreSQL server stopped or restarted):
    every committed batch stays, the one in flight was rolled back with the connection, and
    ``result`` says how far it got. Another backfill on a new connection embeds the rest."""

    def __init__(self, result: BackfillResult, cause: BaseException) -> None:
        reason = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(
            f"backfill stopped: the connection to the database was lost ({reason}); "
            f"{_how_far(result)}, nothing of the batch in flight was written. Open the store "
            "on a new connection and run backfill_embeddings() again: it embeds only what is "
            "still missing"
        )
        self.result = result


@dataclass
class VerifyReport:
    """Counts in SQLite, in the live index and in the files, and whether they agree."""

    sqlite_count: int
    index_count: int
    metadata_count: int | None
    file_count: int | None
    pending_changes: int
    problems: list[str] = field(default_factory=list)
    repaired: bool = False
    #: Rows in the keyword index (None: the store has none, e.g. not migrated yet).
    keyword_count: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    agree = ok
