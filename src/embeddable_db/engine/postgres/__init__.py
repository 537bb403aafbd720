"""The PostgreSQL engine (pgvector): imported only for a psycopg connection, so that the
SQLite path never imports psycopg (``engine_class`` in ``engine/__init__.py``).

``engine.py`` holds the engine, ``schema.py`` its tables and indexes, ``search.py`` the vector
and keyword queries, ``verify.py`` what ``verify_index()`` and ``rebuild_index()`` do there.
"""

from .engine import PostgresEngine

__all__ = ["PostgresEngine"]
