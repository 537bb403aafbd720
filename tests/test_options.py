"""StoreOptions on its own: every constructor keyword checked once, and the path rules.

The mixin, the six databases and the CLI all build their options through this one object;
these tests pin what it accepts, refuses (with the messages users see) and where it puts a
store's files, without opening any store -- except the last ones, which prove the databases
and the mixin really take their keywords from it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import pickle
import sqlite3

import numpy as np
import pytest

from conftest import NotesDB
from embeddable_db import (
    DEFAULT_MODEL,
    BackendUnavailableError,
    BotDB,
    EmbeddableDBMixin,
    EmbeddingError,
    HashingEncoder,
    InvalidInputError,
    StoreConflictError,
)
from embeddable_db.backends.annoy import AnnoyVectorIndex
from embeddable_db.databases import REGISTRY, RecordDB
from embeddable_db.options import (
    HOME_ENV,
    StoreOptions,
    data_home,
    database_paths,
    option_keywords,
    option_names,
)

OPTIONS = (
    "backend", "index_path", "metadata_path", "model_name", "embedding_version", "encoder",
    "index_type", "index_options", "allow_model_change", "model_backend", "read_only", "read_url",
    "read_wait",
)


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- the values ---------------------------------------------------------------------------------
def test_defaults():
    options = StoreOptions()
    assert option_names() == OPTIONS
    assert (options.backend, options.model_name, options.model) == ("annoy", None, DEFAULT_MODEL)
    assert options.backend_class is AnnoyVectorIndex and options.backend_settings == {}
    assert (options.index_path, options.metadata_path, options.lock_path) == (None, None, None)
    assert (options.embedding_version, options.allow_model_change, options.read_only) == (1, False, False)


def test_options_are_frozen_and_keep_a_copy_of_index_options():
    given = {"n_trees": 5}
    options = StoreOptions(index_options=given)
    given["n_trees"] = 0  # the caller's dict changing later changes nothing
    assert options.index_options == {"n_trees": 5} == options.backend_settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.backend = "faiss"
    # Plain values: they copy and pickle (for another process), and asdict works.
    assert pickle.loads(pickle.dumps(options)) == copy.deepcopy(options) == options
    assert dataclasses.asdict(options)["index_options"] == {"n_trees": 5}


def test_checked_values_are_normalised():
    options = StoreOptions(embedding_version=np.int64(3), index_path=b"/tmp/x.index")
    assert type(options.embedding_version) is int and options.embedding_version == 3
    assert options.index_path == "/tmp/x.index" and options.lock_path == "/tmp/x.index.lock"


def test_index_type_joins_the_faiss_settings():
    options = StoreOptions(backend="faiss", index_type="hnsw", index_options={"hnsw_m": 16})
    assert options.backend_settings == {"hnsw_m": 16, "index_type": "hnsw"}
    assert options.index_options == {"hnsw_m": 16}  # as given: index_type stays its own option


def test_keywords_hand_the_options_on_unchanged():
    encoder = HashingEncoder(8)
    options = StoreOptions(backend="faiss", encoder=encoder, embedding_version=2)
    keywords = options.keywords()
    assert tuple(keywords) == OPTIONS and keywords["encoder"] is encoder  # not a copy
    assert StoreOptions(**keywords) == options
    assert options.keywords(read_only=True)["read_only"] is True


@pytest.mark.parametrize(
    ("keywords", "error", "message"),
    [
        ({"backend": "milvus"}, BackendUnavailableError, "choose one of annoy, faiss"),
        ({"backend": None}, BackendUnavailableError, "unknown backend"),
        ({"index_options": 5}, InvalidInputError, "index_options must be a dict"),
        ({"index_options": {"no_such": 1}}, InvalidInputError, "bad options for backend 'annoy'"),
        ({"index_options": {"n_trees": 0}}, InvalidInputError, "n_trees must be an int"),
        ({"index_type": "hnsw"}, InvalidInputError, "index_type is a FAISS option"),
        ({"backend": "faiss", "index_type": "ivf"}, InvalidInputError, "unknown FAISS index_type"),
        ({"embedding_version": 0}, InvalidInputError, "embedding_version must be a positive int"),
        ({"embedding_version": True}, InvalidInputError, "embedding_version"),
        ({"embedding_version": 2**63}, InvalidInputError, "at most 2\\*\\*63 - 1"),
        ({"model_name": ""}, InvalidInputError, "model_name must be a non-empty str"),
        ({"model_name": 5}, InvalidInputError, "model_name must be a non-empty str"),
        ({"model_name": "hash:1"}, InvalidInputError, "hash:<dimension>"),
        ({"model_name": "hash:x"}, InvalidInputError, "hash:<dimension>"),
        ({"model_name": "hash:100000"}, InvalidInputError, "out of range"),
        ({"encoder": object()}, InvalidInputError, "encode\\(list\\[str\\]\\) method"),
        ({"model_backend": "tf"}, InvalidInputError, "unknown model backend 'tf'"),
        ({"model_backend": "onnx", "model_name": "other/model"}, InvalidInputError,
         "runs the default model only"),
        ({"read_only": "yes"}, InvalidInputError, "read_only must be True or False"),
        ({"allow_model_change": 1}, InvalidInputError, "allow_model_change must be True or False"),
        ({"index_path": 5}, InvalidInputError, "must be paths"),
        ({"metadata_path": "bad\0name"}, InvalidInputError, "NUL"),
        ({"index_path": b"\xff.index"}, InvalidInputError, "not valid UTF-8"),
    ],
)
def test_bad_options_are_refused(keywords, error, message):
    with pytest.raises(error, match=message):
        StoreOptions(**keywords)


def test_a_hash_model_is_not_checked_when_an_encoder_is_given():
    assert StoreOptions(model_name="hash:1", encoder=HashingEncoder(8)).model == "hash:1"


def test_an_unknown_keyword_is_a_type_error_naming_the_constructor():
    with pytest.raises(TypeError, match=r"^Demo\(\) got an unexpected keyword argument "
                       r"'index_pth' \(did you mean 'index_path'\?\)$"):
        StoreOptions.from_keywords({"index_pth": "x"}, "Demo")
    with pytest.raises(TypeError, match="'colour'$"):
        StoreOptions.from_keywords({"colour": "x"}, "Demo")


# -- signatures: one declaration --------------------------------------------------------------------
def test_option_keywords_make_the_signature_from_the_fields():
    @option_keywords(after="encoder")
    def make(self, path=None, *, data_dir=None, **keywords):
        return keywords

    params = inspect.signature(make).parameters
    assert list(params) == ["self", "path", *OPTIONS[:6], "data_dir", *OPTIONS[6:]]
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in OPTIONS)
    assert params["backend"].default == "annoy" and params["read_only"].default is False


@pytest.mark.parametrize("cls", [EmbeddableDBMixin, RecordDB, *REGISTRY.values()],
                         ids=lambda cls: cls.__name__)
def test_every_constructor_takes_every_option(cls):
    """A field added to StoreOptions is a keyword of the mixin and of every database."""
    params = inspect.signature(cls.__init__).parameters
    for field in dataclasses.fields(StoreOptions):
        if field.init:
            assert params[field.name].kind is inspect.Parameter.KEYWORD_ONLY
            assert params[field.name].default == field.default


# -- paths ------------------------------------------------------------------------------------------
def test_default_store_paths_are_next_to_the_database(tmp_path):
    options = StoreOptions().located(str(tmp_path / "notes.db"), "embeddings")
    assert options.index_path == str(tmp_path / "notes_embeddings.index")
    assert options.metadata_path == str(tmp_path / "notes_embeddings.json")
    assert options.lock_path == str(tmp_path / "notes_embeddings.index.lock")
    assert tree(tmp_path) == []  # resolving paths creates nothing


def test_store_paths_are_resolved_through_symlinks(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    options = StoreOptions(index_path=tmp_path / "link" / "i.index").located("", "embeddings")
    assert options.index_path == str(tmp_path / "real" / "i.index")
    assert options.metadata_path == str(tmp_path / "real" / "i.json")


def test_an_in_memory_database_keeps_its_index_in_memory():
    options = StoreOptions().located("", "embeddings")
    assert (options.index_path, options.metadata_path, options.lock_path) == (None, None, None)
    with pytest.raises(InvalidInputError, match="metadata_path needs an index_path"):
        StoreOptions(metadata_path="/tmp/m.json").located("", "embeddings")


def test_located_keeps_the_other_options():
    options = StoreOptions(backend="faiss", embedding_version=4, read_only=True)
    assert dataclasses.replace(options.located("", "t")) == options


@pytest.mark.parametrize(
    ("keywords", "error", "message"),
    [
        ({"index_path": "x.index", "metadata_path": "x.index"}, InvalidInputError,
         "metadata_path must differ from index_path"),
        ({"index_path": "x.index", "metadata_path": "x.index.lock"}, InvalidInputError,
         "must differ from the lock file"),
        ({"index_path": "."}, InvalidInputError, "is a folder: name a file inside it"),
        ({"index_path": "missing/x.index"}, InvalidInputError, "does not exist: create it first"),
        ({"index_path": "db.sqlite"}, StoreConflictError, "is the database's own file"),
        ({"metadata_path": "db.sqlite-wal"}, StoreConflictError, "own file \\(wal file\\)"),
    ],
)
def test_unsafe_store_paths_are_refused(tmp_path, keywords, error, message):
    keywords = {key: str(tmp_path / value) for key, value in keywords.items()}
    (tmp_path / "db.sqlite").write_bytes(b"")
    before = tree(tmp_path)
    with pytest.raises(error, match=message):
        StoreOptions(**keywords).located(str(tmp_path / "db.sqlite"), "embeddings")
    assert tree(tmp_path) == before


def test_a_fifo_and_a_planted_lock_symlink_are_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.index")
    with pytest.raises(StoreConflictError, match="is a FIFO"):
        StoreOptions(index_path=tmp_path / "fifo.index").located("", "embeddings")
    os.symlink(tmp_path / "elsewhere", tmp_path / "x.index.lock")
    with pytest.raises(EmbeddingError, match="lock file .* is a symlink"):
        StoreOptions(index_path=tmp_path / "x.index").located("", "embeddings")


def test_database_paths_default_to_the_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    db_file, index, meta = database_paths("bot", "bot_embeddings.ann")
    assert db_file == str(tmp_path / "home" / "bot" / "bot.db")
    assert index == str(tmp_path / "home" / "bot" / "bot_embeddings.ann")
    assert meta == str(tmp_path / "home" / "bot" / "bot_embeddings.json")
    assert database_paths("bot", "b.ann", data_dir=tmp_path / "d")[0] == str(tmp_path / "d/bot/bot.db")
    assert not (tmp_path / "home").exists() and not (tmp_path / "d").exists()


def test_database_paths_follow_a_given_path_and_index(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert database_paths("bot", "b.ann", "~/x/mine.sqlite") == (
        str(tmp_path / "x/mine.sqlite"), str(tmp_path / "x/b.ann"), str(tmp_path / "x/b.json"),
    )
    assert database_paths("bot", "b.ann", ":memory:") == (":memory:", None, None)
    assert database_paths("bot", "b.ann", ":memory:", index_path="~/i.idx") == (
        ":memory:", str(tmp_path / "i.idx"), str(tmp_path / "i.json"),
    )
    with pytest.raises(InvalidInputError, match="either path or data_dir"):
        database_paths("bot", "b.ann", "x.db", data_dir="d")
    with pytest.raises(InvalidInputError, match="data_dir .* not valid UTF-8"):
        database_paths("bot", "b.ann", data_dir=b"\xff")


def test_data_home(tmp_path, monkeypatch):
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_home() == tmp_path / "data"
    monkeypatch.setenv(HOME_ENV, "~/stores")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_home() == tmp_path / "stores"
    assert data_home("rel") == tmp_path / "rel"
    monkeypatch.setenv(HOME_ENV, "\udcff")  # the byte 0xff, not UTF-8
    with pytest.raises(InvalidInputError, match="\\$EMBEDDABLE_DB_HOME .* not valid UTF-8"):
        data_home()


# -- the constructors take their options from it ----------------------------------------------
def test_a_store_keeps_its_checked_options(tmp_path):
    store = NotesDB(str(tmp_path / "n.db"), encoder=HashingEncoder(8), embedding_version=np.int64(2))
    try:
        options = store.embedding_options
        assert isinstance(options, StoreOptions) and options.embedding_version == 2
        assert options.index_path == store.index_path == str(tmp_path / "n_embeddings.index")
        assert options.metadata_path == store.metadata_path
    finally:
        store.close()


def test_unknown_keywords_name_the_constructor(tmp_path):
    with pytest.raises(TypeError, match=r"EmbeddableDBMixin.__init__\(\) .* 'bakend' "
                       r"\(did you mean 'backend'\?\)"):
        NotesDB(str(tmp_path / "n.db"), bakend="faiss")
    with pytest.raises(TypeError, match=r"RecordDB.__init__\(\) .* 'model'"):
        BotDB(data_dir=tmp_path / "data", model="hash:8")
    assert tree(tmp_path) == ["n.db"]  # NotesDB made its own table first; BotDB made nothing


@pytest.mark.parametrize(
    "keywords",
    [{"backend": "milvus"}, {"model_name": "hash:1"}, {"index_options": {"n_trees": -1}},
     {"read_only": "no"}, {"encoder": object()}],
)
def test_a_database_with_a_bad_option_creates_nothing(tmp_path, keywords):
    """The options are checked before the database's folder, file or tables are made."""
    keywords.setdefault("model_name", "hash:8")
    with pytest.raises(EmbeddingError):
        BotDB(data_dir=tmp_path / "data", **keywords)
    with pytest.raises(EmbeddingError):
        BotDB(tmp_path / "x" / "bot.db", **keywords)
    assert tree(tmp_path) == []


def test_a_database_keeps_its_index_paths_as_resolved(tmp_path):
    db = BotDB(data_dir=tmp_path / "data", model_name="hash:8", index_options={"n_trees": 3})
    try:
        assert db.embedding_options.index_path == db.index_path == str(
            tmp_path / "data" / "bot" / BotDB.index_filename
        )
        assert db.embedding_options.backend_settings == {"n_trees": 3}
        assert sqlite3.connect(db.path).execute("SELECT 1").fetchone() == (1,)
    finally:
        db.close()
