"""Any existing table of a SQLite file as a store: ``TableStore`` (``store.py``), the table's
schema read and checked (``schema.py``), and changes recorded by triggers (``changes.py``)."""

from __future__ import annotations

from .store import TableStore

__all__ = ["TableStore"]
