"""The documented surface, pinned: every public name, method, attribute and error class.

The library is being split into parts (issue 11) with no change a user can see. This test
writes the surface out literally, so that any change to it -- a keyword renamed, a default
changed, a method gone, an error re-parented -- fails here and shows in review as a change to
this file (the idea of sqlite-utils' ``tests/test_docs.py``). Signatures are compared as
``help()`` prints them, without annotations: names, kinds (``/``, ``*``) and defaults.
"""

from __future__ import annotations

import inspect

import pytest

import embeddable_db
from conftest import NotesDB
from embeddable_db import HashingEncoder, databases, reports
from embeddable_db.databases import (
    BotDB,
    EnhancementDB,
    ErrorDB,
    InfoDB,
    InformationDB,
    RecordDB,
    WorkflowDB,
)

DATABASES = (BotDB, WorkflowDB, EnhancementDB, ErrorDB, InfoDB, InformationDB)


# -- how the surface is described ------------------------------------------------------------
def plain(signature: inspect.Signature) -> str:
    """A signature as help() shows it, without annotations."""
    return str(
        signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
    )


def kind_of(value) -> str:
    if isinstance(value, type) and issubclass(value, BaseException):
        return "exception"
    if isinstance(value, type):
        return f"class{plain(inspect.signature(value))}"
    if inspect.isfunction(value):
        return f"function{plain(inspect.signature(value))}"
    if isinstance(value, dict):
        return "dict " + ", ".join(f"{k}: {v.__name__}" for k, v in value.items())
    return f"{type(value).__name__} {value!r}"


def members(cls: type) -> dict[str, str]:
    """Every public method, property and class attribute of ``cls``, and its constructor."""
    out = {"__init__": f"method{plain(inspect.signature(cls.__init__))}"}
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property):
            out[name] = "property"
        elif isinstance(raw, classmethod | staticmethod):
            out[name] = f"{type(raw).__name__}{plain(inspect.signature(getattr(cls, name)))}"
        elif inspect.isfunction(raw):
            out[name] = f"method{plain(inspect.signature(raw))}"
        elif name == "tables":  # the databases' TableSpecs: their kinds and SQL tables
            out[name] = "tables " + ", ".join(f"{spec.kind}={spec.table}" for spec in raw)
        elif raw is None or isinstance(raw, str | int | tuple):
            out[name] = f"attribute {raw!r}"
        else:
            out[name] = f"attribute {type(raw).__name__}"
    return out


def error_tree() -> dict[str, list[str]]:
    """Each public exception class and its bases (method resolution order, without object)."""
    found = [getattr(embeddable_db, name) for name in embeddable_db.__all__]
    found += [databases.RecordFormatError, reports.BackfillInterrupted]
    errors = [v for v in found if isinstance(v, type) and issubclass(v, BaseException)]
    return {
        cls.__name__: [base.__name__ for base in cls.__mro__[1:] if base is not object]
        for cls in sorted(errors, key=lambda c: c.__name__)
    }


def public_instance_attributes(db) -> list[str]:
    return sorted(name for name in vars(db) if not name.startswith("_"))


# -- the surface ----------------------------------------------------------------------------------
NAMES = {
    "BackendUnavailableError": "exception",
    "BackfillConnectionLost": "exception",
    "BackfillInterrupted": "exception",
    "BackfillPlan": (
        "class(records=0, missing=0, stale_text=0, stale_model=0, stale_version=0, stale_kind=0, "
        "unchanged=0, orphaned=0, failed=0, failures=<factory>, last_key=None, keyword_missing=0)"
    ),
    "BackfillResult": (
        "class(embedded=0, reembedded=0, removed=0, unchanged=0, failed=0, failures=<factory>, "
        "seconds=0.0, dry_run=False, interrupted=False, last_record_id=None, last_committed_id=None, "
        "keyword_filled=0)"
    ),
    "BotDB": (
        "class(path=None, *, backend='annoy', index_path=None, metadata_path=None, model_name=None, "
        "embedding_version=1, encoder=None, data_dir=None, url=None, index_type=None, index_options=None, "
        "allow_model_change=False, model_backend='torch', read_only=False, read_url=None, read_wait=0.2)"
    ),
    "BotRecord": (
        "class(name, type_='', tasks=<factory>, parent_id='', dependencies=<factory>, "
        "resources=<factory>, hierarchy_level='', purpose='', tags=<factory>, toolchain=<factory>, "
        "creation_date=<factory>, last_modification_date=<factory>, status='active', version='', "
        "estimated_profit=0.0, *, id=None)"
    ),
    "ClosedStoreError": "exception",
    "CorruptIndexError": "exception",
    "DEFAULT_MODEL": "str 'sentence-transformers/all-MiniLM-L6-v2'",
    "DimensionMismatchError": "exception",
    "Discrepancy": "class(message, timestamp=<factory>, *, id=None)",
    "EmbeddableDBMixin": (
        "class(*, backend='annoy', index_path=None, metadata_path=None, model_name=None, "
        "embedding_version=1, encoder=None, index_type=None, index_options=None, "
        "allow_model_change=False, model_backend='torch', read_only=False, read_url=None, read_wait=0.2)"
    ),
    "EmbeddingError": "exception",
    "EncodingError": "exception",
    "Enhancement": (
        "class(idea, rationale='', summary='', score=0.0, context='', before_code='', after_code='', "
        "title='', description='', tags=<factory>, type_='', assigned_bots=<factory>, "
        "rejection_reason='', cost_estimate=0.0, category='', associated_bots=<factory>, "
        "triggered_by='', timestamp=<factory>, model_ids=<factory>, bot_ids=<factory>, "
        "workflow_ids=<factory>, *, id=None)"
    ),
    "EnhancementDB": (
        "class(path=None, *, backend='annoy', index_path=None, metadata_path=None, model_name=None, "
        "embedding_version=1, encoder=None, data_dir=None, url=None, index_type=None, index_options=None, "
        "allow_model_change=False, model_backend='torch', read_only=False, read_url=None, read_wait=0.2)"
    ),
    "ErrorDB": (
        "class(path=None, *, backend='annoy', index_path=None, metadata_path=None, model_name=None, "
        "embedding_version=1, encoder=None, data_dir=None, url=None, index_type=None, index_options=None, "
        "allow_model_change=False, model_backend='torch', read_only=False, read_url=None, read_wait=0.2)"
    ),
    "ErrorRecord": (
        "class(message, type_='', description='', resolution='', category='', cause='', frequency=1, "
        "timestamp=<factory>, *, id=None)"
    ),
    "HashingEncoder": "class(dim=64)",
    "HybridHit": "class(record_id, score, distance, vector_rank, keyword_rank)",
    "InfoDB": (
        "class(path=None, *, backend='annoy', index_path=None, metadata_path=None, model_name=None, "
        "embedding_version=1, encoder=None, data_dir=None, url=None, index_type=None, index_options=None, "
        "allow_model_change=False, model_backend='torch', read_only=False, read_url=None, read_wait=0.2)"
    ),
    "InformationDB": (
        "class(path=None, *, backend='annoy', index_path=None, metadata_path=None, model_name=None, "
        "embedding_version=1, encoder=None, data_dir=None, url=None, index_type=None, index_options=None, "
        "allow_model_change=False, model_backend='torch', read_only=False, read_url=None, read_wait=0.2)"
    ),
    "InformationRecord": (
        "class(data_type, source_url='', date_collected=<factory>, summary='', validated=False, "
        "validation_notes='', keywords=<factory>, data_depth_score=0.0, *, id=None)"
    ),
    "InvalidInputError": "exception",
    "InvalidVectorError": "exception",
    "KnownError": "class(message, solution='', timestamp=<factory>, *, id=None)",
    "ModelConflictError": "exception",
    "ModelUnavailableError": "exception",
    "REGISTRY": (
        "dict bot: BotDB, workflow: WorkflowDB, enhancement: EnhancementDB, error: ErrorDB, "
        "info: InfoDB, information: InformationDB"
    ),
    "ReadOnlyError": "exception",
    "ResearchItem": (
        "class(topic, content='', title='', summary='', tags=<factory>, category='', type_='', "
        "source_url='', data_depth=0.0, notes='', associated_bots=<factory>, "
        "associated_errors=<factory>, energy=1, corroboration_count=0, timestamp=<factory>, *, id=None)"
    ),
    "SearchHit": (
        "class(record_id, kind, distance, record, score=None, vector_rank=None, keyword_rank=None)"
    ),
    "SentenceTransformerEncoder": (
        "class(model_name='sentence-transformers/all-MiniLM-L6-v2', device=None)"
    ),
    "StoreConflictError": "exception",
    "TableStore": (
        "class(path_or_connection, table, *, columns=None, template=None, key=None, where=None, "
        "store=None, track_changes=True, **options)"
    ),
    "TelemetryEvent": (
        "class(task_id='', bot_id='', error_type='', category='', root_cause='', stack_trace='', "
        "root_module='', module='', module_counts=<factory>, inferred_cause='', timestamp=<factory>, "
        "resolution_status='unresolved', patch_id=None, deploy_id=None, checksum='', *, id=None)"
    ),
    "VerifyReport": (
        "class(sqlite_count, index_count, metadata_count, file_count, pending_changes, "
        "problems=<factory>, repaired=False, keyword_count=None)"
    ),
    "WorkflowDB": (
        "class(path=None, *, backend='annoy', index_path=None, metadata_path=None, model_name=None, "
        "embedding_version=1, encoder=None, data_dir=None, url=None, index_type=None, index_options=None, "
        "allow_model_change=False, model_backend='torch', read_only=False, read_url=None, read_wait=0.2)"
    ),
    "WorkflowRecord": (
        "class(workflow=<factory>, title='', description='', task_sequence=<factory>, tags=<factory>, "
        "category='', type_='', status='pending', assigned_bots=<factory>, enhancements=<factory>, "
        "action_chains=<factory>, argument_strings=<factory>, rejection_reason='', "
        "workflow_duration=0.0, performance_data='', estimated_profit_per_bot=0.0, timestamp=<factory>, "
        "*, id=None)"
    ),
    "get_encoder": (
        "function(model_name='sentence-transformers/all-MiniLM-L6-v2', device=None, backend='torch')"
    ),
}

DATABASES_ALL = [
    "BotDB",
    "BotRecord",
    "DEFAULT_HOME",
    "Discrepancy",
    "Enhancement",
    "EnhancementDB",
    "ErrorDB",
    "ErrorRecord",
    "HOME_ENV",
    "InfoDB",
    "InformationDB",
    "InformationRecord",
    "KnownError",
    "REGISTRY",
    "RecordDB",
    "RecordFormatError",
    "ResearchItem",
    "SearchHit",
    "TelemetryEvent",
    "WorkflowDB",
    "WorkflowRecord",
    "data_home",
]

ERRORS = {
    "BackendUnavailableError": ["EmbeddingError", "Exception", "BaseException"],
    "BackfillConnectionLost": ["EmbeddingError", "Exception", "BaseException"],
    "BackfillInterrupted": ["KeyboardInterrupt", "BaseException"],
    "ClosedStoreError": ["EmbeddingError", "Exception", "BaseException"],
    "CorruptIndexError": ["EmbeddingError", "Exception", "BaseException"],
    "DimensionMismatchError": [
        "InvalidVectorError",
        "InvalidInputError",
        "EmbeddingError",
        "ValueError",
        "Exception",
        "BaseException",
    ],
    "EmbeddingError": ["Exception", "BaseException"],
    "EncodingError": ["EmbeddingError", "Exception", "BaseException"],
    "InvalidInputError": ["EmbeddingError", "ValueError", "Exception", "BaseException"],
    "InvalidVectorError": ["InvalidInputError", "EmbeddingError", "ValueError", "Exception", "BaseException"],
    "ModelConflictError": ["StoreConflictError", "EmbeddingError", "Exception", "BaseException"],
    "ModelUnavailableError": [
        "BackendUnavailableError", "EncodingError", "EmbeddingError", "Exception", "BaseException",
    ],
    "ReadOnlyError": ["EmbeddingError", "Exception", "BaseException"],
    "RecordFormatError": ["InvalidInputError", "EmbeddingError", "ValueError", "Exception", "BaseException"],
    "StoreConflictError": ["EmbeddingError", "Exception", "BaseException"],
}

MIXIN = {
    "__init__": (
        "method(self, *, backend='annoy', index_path=None, metadata_path=None, model_name=None, "
        "embedding_version=1, encoder=None, index_type=None, index_options=None, "
        "allow_model_change=False, model_backend='torch', read_only=False, read_url=None, read_wait=0.2)"
    ),
    "add_embedding": "method(self, record_id, record, kind, *, source_id='')",
    "add_embeddings": "method(self, items, *, batch_size=100, source_ids=None)",
    "backfill_embeddings": "method(self, batch_size=100, *, dry_run=False, progress=None)",
    "backfill_plan": "method(self)",
    "close": "method(self)",
    "dimension": "property",
    "embedding_count": "method(self)",
    "embedding_kinds": "attribute None",
    "embedding_lock": "property",
    "embedding_options": "property",
    "embedding_owner": "attribute None",
    "embedding_table": "attribute 'embeddings'",
    "embedding_transaction": "method(self)",
    "embedding_text": "method(self, record)",
    "encode_text": "method(self, text)",
    "encode_texts": "method(self, texts)",
    "encoder": "property",
    "get_vector": "method(self, record_id)",
    "iter_records": "method(self)",
    "load_index": "method(self)",
    "model_counts": "method(self)",
    "prepare_embeddings": "method(self, items, *, batch_size=100, source_ids=None)",
    "rebuild_index": "method(self)",
    "remove_embedding": "method(self, record_id)",
    "remove_embeddings": "method(self, record_ids)",
    "save_index": "method(self)",
    "search_by_keyword": "method(self, text, top_k=10, *, kind=None, ids=None)",
    "keyword_coverage": "method(self, text, best_score=None)",
    "search_hybrid": (
        "method(self, text, top_k=10, *, kind=None, ids=None, weights=(1.0, 1.0), rrf_k=20, "
        "adaptive=True, reranker=None, rerank_candidates=50)"
    ),
    "search_by_text": "method(self, text, top_k=10, *, kind=None, ids=None)",
    "search_by_vector": "method(self, vector, top_k=10, *, kind=None, ids=None)",
    "store_embeddings": "method(self, rows)",
    "try_add_embedding": "method(self, record_id, record, kind, *, source_id='')",
    "update_embedding_version": "method(self, record_id, *, embedding_version=None)",
    "update_embedding_versions": "method(self, record_ids, *, embedding_version=None)",
    "vector": "method(self, record)",
    "verify_index": "method(self, *, repair=False)",
}

# RecordDB: MIXIN plus these (and its own constructor)
RECORD_DB = {
    "__init__": (
        "method(self, path=None, *, backend='annoy', index_path=None, metadata_path=None, "
        "model_name=None, embedding_version=1, encoder=None, data_dir=None, url=None, index_type=None, "
        "index_options=None, allow_model_change=False, model_backend='torch', read_only=False, "
        "read_url=None, read_wait=0.2)"
    ),
    "add": "method(self, record)",
    # tracked changes (tables/tracking.py), as TableStore's
    "backfill_embeddings": "method(self, batch_size=100, *, dry_run=False, progress=None, full=False)",
    "backfill_plan": "method(self, *, full=False)",
    "changes_trusted": "method(self)",
    "pending_changes": "method(self)",
    "count": "method(self, *, kind=None)",
    "delete": "method(self, record_id, *, kind=None)",
    "fetch": "method(self, limit=50, *, kind=None)",
    "get": "method(self, record_id, *, kind=None)",
    "record_from_row": "method(self, row, *, kind=None)",
    "resolve_paths": (
        "classmethod(path=None, *, data_dir=None, index_path=None, metadata_path=None)"
    ),
    "search": "method(self, query, top_k=5, *, kind=None, mode=None, where=None, reranker=None)",
    "update": "method(self, record_id, /, *, kind=None, **fields)",
    "vector_key": "method(self, record_id, kind=None)",
}

# Each database: MIXIN, RECORD_DB and its own
OWN = {
    "BotDB": {
        "embedding_kinds": "attribute ('bot',)",
        "embedding_owner": "attribute 'BotDB'",
        "embedding_table": "attribute 'bot_embeddings'",
        "find_by_name": "method(self, name)",
        "index_filename": "attribute 'bot_embeddings.index'",
        "name": "attribute 'bot'",
        "tables": "tables bot=bots",
    },
    "WorkflowDB": {
        "embedding_kinds": "attribute ('workflow',)",
        "embedding_owner": "attribute 'WorkflowDB'",
        "embedding_table": "attribute 'workflow_embeddings'",
        "index_filename": "attribute 'workflow_embeddings.index'",
        "name": "attribute 'workflow'",
        "tables": "tables workflow=workflows",
        "update_status": "method(self, record_id, status)",
        "update_statuses": "method(self, record_ids, status)",
    },
    "EnhancementDB": {
        "embedding_kinds": "attribute ('enhancement',)",
        "embedding_owner": "attribute 'EnhancementDB'",
        "embedding_table": "attribute 'enhancement_embeddings'",
        "index_filename": "attribute 'enhancement_embeddings.ann'",
        "name": "attribute 'enhancement'",
        "tables": "tables enhancement=enhancements",
    },
    "ErrorDB": {
        "add_error": "method(self, message, **fields)",
        "add_known": "method(self, message, solution)",
        "add_telemetry": "method(self, event)",
        "embedding_kinds": "attribute ('error', 'known_error', 'discrepancy', 'telemetry')",
        "embedding_owner": "attribute 'ErrorDB'",
        "embedding_table": "attribute 'error_embeddings'",
        "find_solution": "method(self, message, *, max_distance=0.5)",
        "index_filename": "attribute 'error_embeddings.index'",
        "log_discrepancy": "method(self, message)",
        "name": "attribute 'error'",
        "tables": (
            "tables error=errors, known_error=known_errors, discrepancy=discrepancies, "
            "telemetry=telemetry"
        ),
    },
    "InfoDB": {
        "embedding_kinds": "attribute ('info',)",
        "embedding_owner": "attribute 'InfoDB'",
        "embedding_table": "attribute 'info_embeddings'",
        "index_filename": "attribute 'information_embeddings.index'",
        "name": "attribute 'info'",
        "search_keywords": "method(self, term, limit=20)",
        "tables": "tables info=info",
    },
    "InformationDB": {
        "embedding_kinds": "attribute ('information',)",
        "embedding_owner": "attribute 'InformationDB'",
        "embedding_table": "attribute 'information_embeddings'",
        "index_filename": "attribute 'information_embeddings.index'",
        "name": "attribute 'information'",
        "tables": "tables information=information",
    },
}

# Attributes an open store sets (vars(store)), public ones
MIXIN_INSTANCE = [
    "backend_name",
    "conn",
    "embedding_version",
    "index_path",
    "metadata_path",
    "model_backend",
    "model_id",
    "model_name",
]

RECORD_DB_INSTANCE = sorted([*MIXIN_INSTANCE, "path", "schema", "url"])  # url, schema: PostgreSQL


# -- the tests ------------------------------------------------------------------------------------
def test_public_names_are_pinned_and_importable():
    assert embeddable_db.__all__ == sorted(NAMES)
    assert {name: kind_of(getattr(embeddable_db, name)) for name in embeddable_db.__all__} == NAMES
    assert set(NAMES) <= set(dir(embeddable_db))
    namespace: dict = {}
    exec("from embeddable_db import *", namespace)  # noqa: S102 - the star import users write
    assert set(NAMES) <= set(namespace)


def test_databases_module_names_are_pinned():
    assert sorted(databases.__all__) == DATABASES_ALL
    for name in DATABASES_ALL:
        getattr(databases, name)


def test_error_hierarchy_is_pinned():
    assert error_tree() == ERRORS


def test_mixin_surface_is_pinned():
    assert members(embeddable_db.EmbeddableDBMixin) == MIXIN


def test_record_db_surface_is_pinned():
    assert members(RecordDB) == {**MIXIN, **RECORD_DB}


@pytest.mark.parametrize("cls", DATABASES, ids=lambda cls: cls.__name__)
def test_database_surface_is_pinned(cls):
    assert members(cls) == {**MIXIN, **RECORD_DB, **OWN[cls.__name__]}


def test_instance_attributes_are_pinned(tmp_path):
    store = NotesDB(str(tmp_path / "notes.db"), encoder=HashingEncoder(8))
    try:
        assert public_instance_attributes(store) == MIXIN_INSTANCE
    finally:
        store.close()
    for cls in DATABASES:
        db = cls(data_dir=tmp_path / "data", model_name="hash:8")
        try:
            assert public_instance_attributes(db) == RECORD_DB_INSTANCE, cls.__name__
        finally:
            db.close()

