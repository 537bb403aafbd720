"""The engine conformance suite: what every storage engine under the mixin must show.

Written once against the public mixin API and parametrised over engines (``engines.py``), so
that a second engine (PostgreSQL + pgvector) is proved by adding one factory class to
``ENGINES``.
"""
