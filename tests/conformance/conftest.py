"""The ``engine`` fixture: one factory (``engines.py``) per engine variant, one store per test.

Parameters are ``<engine>-<variant>`` (``sqlite-annoy``, ``sqlite-faiss``,
``sqlite-faiss-hnsw``, ``postgres-pgvector``): a new engine's factory in ``ENGINES`` adds its
own. The PostgreSQL one takes a fresh schema of the session's test server (``tests/postgres``).
"""

from __future__ import annotations

import pytest

from .engines import ENGINES

PARAMS = [
    pytest.param((engine, variant), id=f"{engine.name}-{variant}")
    for engine in ENGINES
    for variant in engine.variants
]


@pytest.fixture(params=PARAMS)
def engine(request, tmp_path):
    engine_class, variant = request.param
    reason = engine_class.available()
    if reason is not None:
        pytest.skip(f"{engine_class.name}: {reason}")
    factory = engine_class.for_test(request, tmp_path, variant)
    yield factory
    factory.close_all()
