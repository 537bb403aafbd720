"""Every constructor option of a store, checked once, and the rules for where its files go.

Why one object: the mixin, the six databases' ``RecordDB`` and the CLI each took the same
eleven keywords and handed them on, so a new option meant three edits that could drift apart.
``StoreOptions`` declares each option once -- its name, default and check -- and the
constructors' signatures are made from its fields (``option_keywords``), so ``help()``, the
surface test and callers still see every keyword by name. A store keeps the checked object
(``embedding_options``); the CLI builds one before it opens a database.

What it owns:

- the checks of every keyword, run before anything is opened or written, so a bad option
  changes nothing; the errors and messages are the ones the mixin raised before;
- a store's file paths: the default index and metadata paths (``<stem>_<embedding_table>.index``
  next to the database file, and the index path with ``.json``), resolved once (symlinks
  followed) and checked to be safe to use (``files.py``); ``located()`` applies them;
- the six databases' default files: the data directory (``data_home``) and
  ``<data_dir>/<name>/<name>.db`` with its index next to it (``database_paths``).

It opens nothing and holds no state beyond the values: what a model is (identity, loading)
belongs to the encoder, and whether the files on disk are the store's own to ``ownership``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from . import files
from . import validation as check
from .backends import VectorIndex, bounded_int, get_backend
from .encoder import DEFAULT_MODEL, HASH_MODEL_PREFIX, check_model_backend
from .errors import BackendUnavailableError, InvalidInputError

HOME_ENV = "EMBEDDABLE_DB_HOME"
DEFAULT_HOME = "data"

F = TypeVar("F", bound=Callable[..., Any])

#: The PostgreSQL engine's one backend: its index lives in the database (no index files).
PGVECTOR = "pgvector"
#: pgvector's HNSW settings ``index_options`` may give, with their ranges: ``m`` and
#: ``ef_construction`` shape the index (pgvector's own defaults 16 and 64), ``ef_search`` is
#: the candidate list a search keeps (``hnsw.ef_search``; our default is in the engine).
PGVECTOR_SETTINGS = {"m": (2, 100), "ef_construction": (4, 1000), "ef_search": (1, 1000)}
#: ``read_wait``'s default and bound, in seconds: a healthy standby replays a commit in
#: milliseconds, and a search waiting longer than the primary takes to answer gains nothing.
DEFAULT_READ_WAIT = 0.2
MAX_READ_WAIT = 60.0


class _DefaultBackend(str):
    """The value of ``backend`` when the caller gave none: equal to ``"annoy"`` in every way
    (signatures, comparisons, JSON), but recognisable, so that a PostgreSQL connection can
    take ``"pgvector"`` by default while an explicit ``backend="annoy"`` there is refused."""

    __slots__ = ()


DEFAULT_BACKEND = _DefaultBackend("annoy")


@dataclasses.dataclass(frozen=True, slots=True)
class StoreOptions:
    """A store's constructor keywords, checked when the object is made.

    A new option is one field here with its check in ``__post_init__``: the mixin, the
    databases and the CLI take it from these fields.
    """

    #: The ANN library behind the index file: ``"annoy"`` or ``"faiss"``; ``"pgvector"`` (the
    #: default there, and the only one) for a PostgreSQL connection.
    backend: str = DEFAULT_BACKEND
    #: The index file (default: next to the database file); its lock is ``<index_path>.lock``.
    index_path: str | os.PathLike | None = None
    #: The index's JSON manifest (default: ``index_path`` with ``.json``).
    metadata_path: str | os.PathLike | None = None
    #: The model (default: the encoder's own name, else ``DEFAULT_MODEL``); ``hash:<dim>``
    #: is the model-free hashing encoder.
    model_name: str | None = None
    #: Vectors older than this are re-embedded by a backfill.
    embedding_version: int = 1
    #: Any object with ``encode(list[str]) -> array``, used instead of loading ``model_name``.
    encoder: Any | None = None
    #: FAISS only: ``"flat"`` (exact) or ``"hnsw"``.
    index_type: str | None = None
    #: The backend's own settings (``n_trees``, ``hnsw_m``, ...), checked by building one.
    index_options: Mapping[str, Any] | None = None
    #: Open a store whose vectors another model made (a backfill then re-embeds them).
    allow_model_change: bool = False
    #: What runs the model: ``"torch"``, or ``"onnx"`` for the default model without torch.
    model_backend: str = "torch"
    #: Write nothing at all; every write raises ``ReadOnlyError``.
    read_only: bool = False
    #: PostgreSQL only: a hot standby of the database (a libpq conninfo or ``postgresql://``
    #: URL); searches go there, writes to the primary (``engine/postgres/replica.py``).
    read_url: str | None = None
    #: Seconds a search waits for the standby to replay this process's last commit before it
    #: asks the primary instead (0: never wait).
    read_wait: float = DEFAULT_READ_WAIT

    #: The backend class and the settings it is built with (``index_type`` included); for
    #: ``pgvector`` no class (the index is the database's) and the checked HNSW settings.
    backend_class: type[VectorIndex] | None = dataclasses.field(init=False, repr=False, compare=False)
    backend_settings: dict[str, Any] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the checked values replace the given ones once
        if self.backend == PGVECTOR:
            set_(self, "backend_class", None)
            set_(self, "backend_settings", _pgvector_settings(self))
        else:
            backend_class = _known_backend(self.backend)
            set_(self, "backend_class", backend_class)
            try:
                settings = _backend_settings(self, backend_class)
            except InvalidInputError:
                if self.backend_chosen or not _pgvector_takes(self):
                    raise
                settings = None  # pgvector's settings: a PostgreSQL connection's (else refused)
            set_(self, "backend_settings", settings)
        if self.index_options is not None:  # a copy: the caller's dict may change later
            set_(self, "index_options", dict(self.index_options))
        set_(self, "embedding_version", check.check_embedding_version(self.embedding_version))
        model = self.model
        if not isinstance(model, str) or not model.strip():
            raise InvalidInputError(f"model_name must be a non-empty str, got {model!r}")
        if self.encoder is not None and not callable(getattr(self.encoder, "encode", None)):
            raise InvalidInputError("encoder must have an encode(list[str]) method")
        if self.encoder is None and model.startswith(HASH_MODEL_PREFIX):
            dim = model[len(HASH_MODEL_PREFIX) :]
            if not dim.isdigit() or int(dim) < 2:
                raise InvalidInputError(f"model {model!r}: use 'hash:<dimension>', e.g. hash:64")
            check.check_dimension(int(dim), f"model {model!r}")
        check_model_backend(model, self.model_backend)
        for name in ("allow_model_change", "read_only"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("index_path", "metadata_path"):
            if getattr(self, name) is not None:
                set_(self, name, files.text_path(getattr(self, name), name))
        set_(self, "read_wait", _read_wait(self.read_wait))
        if self.read_url is not None and (not isinstance(self.read_url, str) or not self.read_url.strip()):
            raise InvalidInputError(
                f"read_url must be the conninfo or postgresql:// URL of a hot standby, got "
                f"{type(self.read_url).__name__} {self.read_url!r:.60}"
            )

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any], where: str) -> StoreOptions:
        """The options of a constructor's ``**keywords``; an unknown name is the TypeError
        Python gives for any function (``where`` names the function), with a suggestion."""
        names = option_names()
        for name in keywords:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(f"{where}() got an unexpected keyword argument {name!r}{hint}")
        return cls(**keywords)

    @property
    def model(self) -> str:
        """The model to load when no encoder is given: ``model_name``, else the default model."""
        return DEFAULT_MODEL if self.model_name is None else self.model_name

    @property
    def backend_chosen(self) -> bool:
        """False when ``backend`` is the default, which each engine reads as its own."""
        return type(self.backend) is not _DefaultBackend

    @property
    def lock_path(self) -> str | None:
        """The index's lock file, beside it (None without an index file)."""
        return None if self.index_path is None else f"{self.index_path}.lock"

    def keywords(self, **changes: Any) -> dict[str, Any]:
        """The constructor keywords these options were made of (with ``changes``), to hand on."""
        return {name: getattr(self, name) for name in option_names()} | changes

    def with_backend(self, backend: str) -> StoreOptions:
        """These options for another backend, checked again (an engine's own default)."""
        return dataclasses.replace(self, backend=backend)

    def located(self, db_file: str, table: str) -> StoreOptions:
        """These options with the store's absolute index and metadata paths, checked.

        ``db_file`` is the database's file ('' for an in-memory database, whose index stays
        in memory unless ``index_path`` is given) and ``table`` the store's embedding table.
        """
        if self.backend == PGVECTOR:
            raise InvalidInputError(
                "backend 'pgvector' is the PostgreSQL engine's: set self.conn to a psycopg "
                "connection to use it, or choose 'annoy' or 'faiss' for a SQLite database"
            )
        refuse_postgres_only(self)
        index, meta = store_paths(db_file, table, self.index_path, self.metadata_path)
        return dataclasses.replace(self, index_path=index, metadata_path=meta)


def refuse_postgres_only(options: StoreOptions) -> None:
    """What only PostgreSQL has, refused for a SQLite database before it is opened: a standby
    (``read_url``), and pgvector's ``index_options`` without a backend that takes them."""
    if options.backend_settings is None:
        try:
            _backend_settings(options, options.backend_class)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"{exc}; {sorted(options.index_options or {})} are pgvector's settings, for a "
                "PostgreSQL database (url=, or a psycopg connection as self.conn)") from None
    if options.read_url is not None:
        raise InvalidInputError(
            "read_url names a PostgreSQL hot standby, and this store is a SQLite database: "
            "leave read_url out, or open the database on PostgreSQL (url=, or a psycopg "
            "connection as self.conn)"
        )


def _read_wait(value: Any) -> float:
    """``read_wait`` as seconds, 0 to ``MAX_READ_WAIT`` (unused without a ``read_url``, which
    ``$EMBEDDABLE_DB_READ_URL`` may give a database after its options are checked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
        0 <= value <= MAX_READ_WAIT  # NaN fails this too
    ):
        raise InvalidInputError(
            f"read_wait must be a number of seconds from 0 to {MAX_READ_WAIT:g}, got {value!r}"
        )
    return float(value)


def _known_backend(name: Any) -> type[VectorIndex]:
    """``get_backend``, its "unknown backend" error naming the PostgreSQL backend too."""
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        if str(exc).startswith("unknown backend"):
            raise BackendUnavailableError(
                f"{exc} (SQLite), or {PGVECTOR} (a PostgreSQL connection)"
            ) from None
        raise


def _pgvector_takes(options: StoreOptions) -> bool:
    """Whether ``index_options`` are pgvector's (a default backend may turn out to be it)."""
    try:
        _pgvector_settings(options)
    except InvalidInputError:
        return False
    return options.index_type is None


def _pgvector_settings(options: StoreOptions) -> dict[str, Any]:
    """pgvector's HNSW settings from ``index_options``, checked (``PGVECTOR_SETTINGS``)."""
    index_options = options.index_options
    if options.index_type is not None:
        raise InvalidInputError(f"index_type is a FAISS option; backend {PGVECTOR!r} has none")
    if index_options is not None and not isinstance(index_options, Mapping):
        raise InvalidInputError(
            f"index_options must be a dict of backend settings, got {index_options!r}"
        )
    settings: dict[str, Any] = {}
    for name, value in (index_options or {}).items():
        if name not in PGVECTOR_SETTINGS:
            raise InvalidInputError(
                f"bad options for backend {PGVECTOR!r}: unknown setting {name!r}; it takes "
                f"{', '.join(PGVECTOR_SETTINGS)}"
            )
        try:
            settings[name] = bounded_int(name, value, *PGVECTOR_SETTINGS[name])
        except ValueError as exc:
            raise InvalidInputError(f"bad options for backend {PGVECTOR!r}: {exc}") from exc
    if settings.get("ef_construction", 64) < 2 * settings.get("m", 16):
        raise InvalidInputError(
            f"bad options for backend {PGVECTOR!r}: ef_construction must be at least 2 * m"
        )
    return settings


def _backend_settings(options: StoreOptions, backend_class: type[VectorIndex]) -> dict[str, Any]:
    """``index_options`` plus ``index_type``, checked by building a 2-dimensional index: a bad
    setting is refused when the store opens, not found out minutes into a build."""
    index_options, backend = options.index_options, options.backend
    if index_options is not None and not isinstance(index_options, Mapping):
        raise InvalidInputError(
            f"index_options must be a dict of backend settings, got {index_options!r}"
        )
    settings = dict(index_options or {})
    if options.index_type is not None:
        if backend != "faiss":
            raise InvalidInputError(f"index_type is a FAISS option; backend {backend!r} has none")
        settings["index_type"] = options.index_type
    try:
        backend_class(2, **settings)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"bad options for backend {backend!r}: {exc}") from exc
    return settings


def option_names() -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(StoreOptions) if field.init)


def option_parameters() -> list[inspect.Parameter]:
    """The options as keyword-only parameters, for a constructor's signature."""
    return [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in dataclasses.fields(StoreOptions)
        if f.init
    ]


def option_keywords(*, after: str | None = None) -> Callable[[F], F]:
    """Give a constructor that takes ``**keywords`` the options as its signature.

    ``help()``, editors and ``inspect.signature`` then show every option by name while each
    is declared once, in ``StoreOptions``. The constructor's own keyword-only parameters are
    placed after the option ``after`` (else after all of them).
    """

    def decorate(function: F) -> F:
        own = inspect.signature(function)
        params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        leading = [p for p in params if p.kind is not p.KEYWORD_ONLY]
        extra = [p for p in params if p.kind is p.KEYWORD_ONLY]
        options = option_parameters()
        at = len(options) if after is None else option_names().index(after) + 1
        function.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[*leading, *options[:at], *extra, *options[at:]]
        )
        return function

    return decorate


# -- paths ------------------------------------------------------------------------------------------
def store_paths(
    db_file: str,
    table: str,
    index_path: str | os.PathLike | None,
    metadata_path: str | os.PathLike | None,
) -> tuple[str | None, str | None]:
    """(index file, metadata file) of a store, absolute with symlinks resolved, and checked:
    not a folder, in a folder that exists, not the database's own files, not a device."""
    if index_path is None:
        if not db_file:  # an in-memory database: keep the index in memory too
            if metadata_path is not None:
                raise InvalidInputError("metadata_path needs an index_path for this database")
            return None, None
        base = Path(files.text_path(db_file, "the database path"))
        index_path = base.with_name(f"{base.stem}_{table}.index")
    # Symlinks are resolved once, here: the files and the lock are the target's.
    index = files.resolved(index_path, "index_path")
    meta = files.resolved(
        metadata_path if metadata_path is not None else Path(index).with_suffix(".json"),
        "metadata_path",
    )
    if meta == index:
        raise InvalidInputError("metadata_path must differ from index_path")
    for path, name in ((index, "index_path"), (meta, "metadata_path")):
        if os.path.isdir(path):
            raise InvalidInputError(f"{path!r} is a folder: name a file inside it")
        if not os.path.isdir(os.path.dirname(path)):
            raise InvalidInputError(
                f"folder {os.path.dirname(path)!r} does not exist: create it first"
            )
        files.check_not_database(path, db_file, name)
        files.stat_regular(path)  # a device or FIFO is refused, never opened
    files.check_lock_path(index + ".lock")
    files.check_not_database(index + ".lock", db_file, "the lock file", "index_path")
    if meta == index + ".lock":
        raise InvalidInputError("metadata_path must differ from the lock file index_path.lock")
    return index, meta


def data_home(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory, absolute and with ``~`` expanded, so that every file of a command
    (databases, indexes, locks) lands under one folder: ``data_dir``, else
    ``$EMBEDDABLE_DB_HOME``, else ``./data``."""
    home = data_dir if data_dir is not None else os.environ.get(HOME_ENV) or DEFAULT_HOME
    home = files.text_path(home, "data_dir" if data_dir is not None else f"${HOME_ENV}")
    return Path(os.path.abspath(os.path.expanduser(home)))


def database_paths(
    name: str,
    index_filename: str,
    path: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    index_path: str | os.PathLike | None = None,
    metadata_path: str | os.PathLike | None = None,
) -> tuple[str, str | None, str | None]:
    """(SQLite file, index file, metadata file) of one of the six databases, absolute and
    with ``~`` expanded; nothing is created on disk.

    Without ``path`` the database is ``<data_dir>/<name>/<name>.db``, where ``data_dir``
    defaults to ``$EMBEDDABLE_DB_HOME``, else ``./data``. The index defaults to
    ``index_filename`` next to the SQLite file and the metadata to the index path with
    ``.json``. ``path=":memory:"`` keeps everything in memory unless ``index_path`` is given.
    """
    if path is not None and data_dir is not None:
        raise InvalidInputError("give either path or data_dir, not both")
    path, data_dir, index_path, metadata_path = (  # one clear error for non-UTF-8 paths
        None if value is None else files.text_path(value, option)
        for value, option in (
            (path, "path"), (data_dir, "data_dir"), (index_path, "index_path"),
            (metadata_path, "metadata_path"),
        )
    )
    if path is not None and os.fspath(path) == ":memory:":
        db_file = ":memory:"
    else:
        if path is None:
            path = data_home(data_dir) / name / f"{name}.db"
        db_file = os.path.abspath(Path(path).expanduser())
        if index_path is None:
            index_path = Path(db_file).with_name(index_filename)
    if index_path is not None:
        index_path = os.path.abspath(Path(index_path).expanduser())
        if metadata_path is None:
            metadata_path = Path(index_path).with_suffix(".json")
    if metadata_path is not None:
        metadata_path = os.path.abspath(Path(metadata_path).expanduser())
    return db_file, index_path, metadata_path
