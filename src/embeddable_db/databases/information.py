"""InformationDB: static information records (reports, datasets, facts) and their validation."""

from __future__ import annotations

import dataclasses

from ._base import RecordDB
from .records import Record, TableSpec, compose, json_list, listed
from .timestamps import created_now


@dataclasses.dataclass
class InformationRecord(Record):
    """A piece of collected information of some ``data_type`` (e.g. ``"market_report"``)."""

    EMBEDDED_FIELDS = ("data_type", "summary", "keywords", "validation_notes")

    data_type: str
    source_url: str = ""
    date_collected: str = created_now()
    summary: str = ""
    validated: bool = False
    validation_notes: str = ""
    keywords: list[str] = json_list()
    data_depth_score: float = 0.0

    def embedding_text(self) -> str:
        """Data type (underscores read as spaces), summary, keywords, validation notes."""
        return compose(
            self.data_type.replace("_", " "),
            ("Summary", self.summary),
            ("Keywords", listed(self.keywords)),
            ("Validation notes", self.validation_notes),
        )


class InformationDB(RecordDB):
    """Information records in table ``information``; vectors keyed ``"information:<id>"``.

    Embedded text: the data type, the summary, the keywords and the validation notes. Not
    embedded: the source URL, the collection date, the depth score and ``validated`` (a flag
    whose rendering once differed between code paths; it is filterable with SQL instead).

    Its default index file has the same name as InfoDB's (``information_embeddings.index``)
    but lives in its own folder; pointing both at one file is refused, never mixed.
    """

    name = "information"
    index_filename = "information_embeddings.index"
    tables = (TableSpec("information", InformationRecord, "information", indexed=("data_type",)),)
