"""Input checks shared by the engine, the CLI and the sidecar.

Each check either returns the cleaned value or raises a specific
:class:`~probewatch.errors.InputError` saying what was expected and what came.

>>> check_account("acct-1")
'acct-1'
>>> check_prompt("café".encode(), max_chars=100)
'café'
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Mapping, Sequence, Set
from typing import Any

import numpy as np

from probewatch.kernels.backend import cupy_available, cupy_module, get_array_module, to_numpy

from ..campaigns.metadata import check_meta
from ..errors import (
    BatchLengthError,
    InvalidAccountError,
    InvalidEmbeddingError,
    InvalidPromptError,
    InvalidTimestampError,
    ProbewatchError,
)

MAX_ACCOUNT_ID_LENGTH = 256
# Unicode categories an account id may not contain: controls (C0 and C1, e.g. U+0085), format
# characters (U+200B zero width space, U+202E right-to-left override), line and paragraph
# separators (U+2028, U+2029).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
# Unix seconds: from the epoch to year 5138. A millisecond timestamp of today is above it.
MIN_TIMESTAMP = 0.0
MAX_TIMESTAMP = 1e11


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"{type(value).__name__} too long to print"
    return text if len(text) <= 60 else text[:57] + "..."


def decimal_digits(number: numbers.Real) -> int:
    """About how many digits ``number`` has before its point (str() refuses ints past 4,300)."""
    return int(abs(math.trunc(number))).bit_length() * 30103 // 100000 + 1


def check_account(account: Any) -> str:
    """An account id: a non-empty str of at most 256 characters, without control, format
    (zero-width, direction override) or line-separator characters."""
    # The common case in three C calls: printable ASCII holds none of the characters refused
    # below (it is 0x20-0x7E), so only emptiness, blankness and length are left to check.
    if (
        type(account) is str
        and account.isascii()
        and account.isprintable()
        and 0 < len(account) <= MAX_ACCOUNT_ID_LENGTH
        and not account.isspace()
    ):
        return account
    if not isinstance(account, str):
        raise InvalidAccountError(f"an account id must be a str; got {type(account).__name__} {_describe(account)}")
    if not account or not account.strip():
        raise InvalidAccountError(f"an account id must be non-empty and not only whitespace; got {account!r}")
    if len(account) > MAX_ACCOUNT_ID_LENGTH:
        raise InvalidAccountError(
            f"an account id must be at most {MAX_ACCOUNT_ID_LENGTH} characters; got {len(account)} "
            f"(starting {account[:40]!r}); hash long ids before passing them"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in account):
        raise InvalidAccountError(
            f"an account id must not contain control characters (newlines, NUL, ...); got {_describe(account)}"
        )
    hidden = next((ch for ch in account if unicodedata.category(ch) in _INVISIBLE_CATEGORIES), None)
    if hidden is not None:
        # invisible and direction-changing characters make two ids look alike in logs and consoles
        raise InvalidAccountError(
            f"an account id must not contain control, format or line-separator characters; got "
            f"U+{ord(hidden):04X} ({unicodedata.name(hidden, 'unnamed')}) in {_describe(account)}"
        )
    try:
        account.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidAccountError(
            f"an account id must be valid Unicode text; got lone surrogates in {_describe(account)}"
        ) from exc
    return account


def check_prompt(prompt: Any, max_chars: int) -> str:
    """A prompt: str (or UTF-8 bytes), not blank, no NUL, at most ``max_chars`` characters."""
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        raw = bytes(prompt)
        try:
            prompt = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPromptError(
                f"a prompt given as bytes must be valid UTF-8; byte {exc.start} is {raw[exc.start : exc.start + 1]!r} "
                f"({exc.reason}); decode it yourself or send text"
            ) from exc
    if not isinstance(prompt, str):
        raise InvalidPromptError(
            f"a prompt must be a str or UTF-8 bytes; got {type(prompt).__name__} {_describe(prompt)}"
        )
    if "\x00" in prompt:
        raise InvalidPromptError(
            f"a prompt must be text without NUL characters; got one at position {prompt.index(chr(0))}; "
            "binary payloads are not prompts"
        )
    if not prompt.strip():
        raise InvalidPromptError(f"a prompt must contain non-whitespace text; got {_describe(prompt)}")
    if len(prompt) > max_chars:
        raise InvalidPromptError(
            f"a prompt must be at most {max_chars} characters (config max_prompt_chars); got {len(prompt)}. "
            "Send the text the model actually sees, or raise the limit"
        )
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPromptError(
            f"a prompt must be valid Unicode; got a lone surrogate at position {exc.start} "
            "(text decoded with errors='surrogateescape'?)"
        ) from exc
    return prompt


def cut_middle(text: str, max_chars: int, head_share: float = 0.5) -> str:
    """``text`` if it has at most ``max_chars`` characters, else its first ``head_share`` of
    ``max_chars`` characters and its last, joined: a long prompt keeps its opening (the task)
    and its end (the question asked), which is what the embedder reads of it.

    >>> cut_middle("abcdefgh", 4)
    'abgh'
    >>> cut_middle("abcdefgh", 4, head_share=0.25)
    'afgh'
    """
    if len(text) <= max_chars:
        return text
    head = int(max_chars * head_share)
    return text[:head] + text[len(text) - (max_chars - head) :]


def check_timestamp(ts: Any) -> float | None:
    """A timestamp: None, or a finite number of seconds, returned as float."""
    if ts is None:
        return None
    # numbers.Real takes NumPy's integers and floats; bool (and NumPy's) is refused
    if isinstance(ts, bool) or not isinstance(ts, numbers.Real):
        raise InvalidTimestampError(f"a timestamp must be a number of seconds or None; got {_describe(ts)}")
    try:
        value = float(ts)
    except OverflowError:
        raise InvalidTimestampError(
            f"a timestamp must be a number of seconds; got a number of about {decimal_digits(ts)} digits"
        ) from None
    if not math.isfinite(value):
        raise InvalidTimestampError(f"a timestamp must be finite; got {value}")
    if not MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        raise InvalidTimestampError(
            f"a timestamp must be Unix seconds between {MIN_TIMESTAMP:.0f} and {MAX_TIMESTAMP:.0f} (years 1970-5138); "
            f"got {value:g} (milliseconds? divide by 1000)"
        )
    return value


def check_same_length(*, required: tuple[str, ...] = (), **named: Sequence[Any] | None) -> int:
    """All given sequences (None ones skipped, unless ``required`` names them) have one length;
    returns it. A bare string, bytes, mapping or set is refused: iterated, it would pass its
    characters or keys for items, or pair them in no order."""
    lengths = {}
    for name, seq in named.items():
        if seq is None:
            if name in required:
                raise BatchLengthError(
                    f"{name} must be a sequence with one entry per item (a list, tuple or array); got None"
                )
            continue
        if isinstance(seq, str | bytes | bytearray | Mapping):
            raise BatchLengthError(
                f"{name} must be a sequence with one entry per item (a list, tuple or array); got "
                f"{type(seq).__name__} {_describe(seq)}. For a single item, wrap it in a list"
            )
        try:
            lengths[name] = len(seq)
        except TypeError:
            raise BatchLengthError(
                f"{name} must be a sequence with one entry per item (a list, tuple or array); got "
                f"{type(seq).__name__}, which has no length (materialise an iterator with list(...))"
            ) from None
        if isinstance(seq, Set):
            raise BatchLengthError(
                f"{name} must be a sequence with one entry per item in order (a list, tuple or array); got an "
                f"unordered {type(seq).__name__}, whose items would pair with the wrong entries of the other inputs"
            )
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise BatchLengthError(f"batch inputs must have one length each item; got {detail}")
    return next(iter(lengths.values()), 0)


# DLPack device types of CUDA memory (dlpack.h: kDLCUDA, kDLCUDAManaged)
_DLPACK_CUDA_DEVICES = (2, 13)


def _has_cuda_interface(vectors: Any) -> bool:
    try:
        return hasattr(vectors, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - torch refuses it for a tensor that requires grad; DLPack still tells
        return False


def on_cuda_device(vectors: Any) -> bool:
    """True for arrays held in CUDA memory: CuPy arrays, torch CUDA tensors, anything that
    exposes ``__cuda_array_interface__`` or a CUDA DLPack device."""
    if _has_cuda_interface(vectors):
        return True
    dlpack_device = getattr(vectors, "__dlpack_device__", None)
    if dlpack_device is None or isinstance(vectors, np.ndarray):
        return False
    try:
        return int(dlpack_device()[0]) in _DLPACK_CUDA_DEVICES
    except Exception:  # noqa: BLE001 - an object that cannot say where it lives is treated as host data
        return False


def _as_device_float32(vectors: Any):
    """A CuPy float32 view or copy of CUDA-resident ``vectors`` (no trip through the host)."""
    if not cupy_available():
        raise InvalidEmbeddingError(
            f"vectors live on a CUDA device ({type(vectors).__name__}) but CuPy is not installed or sees no device; "
            "install the GPU extra (pip install 'probewatch[gpu]') or pass host rows (e.g. tensor.cpu().numpy())"
        )
    cp = cupy_module()
    try:
        arr = cp.asarray(vectors) if _has_cuda_interface(vectors) else cp.from_dlpack(vectors)
        return arr.astype(cp.float32, copy=False)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:  # e.g. a tensor that requires grad
        raise InvalidEmbeddingError(
            f"vectors must be a numeric (n, d) array; got {type(vectors).__name__} on a CUDA device: {exc}"
        ) from exc


def check_embeddings(vectors: Any, dim: int):
    """An (n, dim) finite, non-zero matrix, returned as unit-norm C-contiguous float32.

    Host input comes back as a NumPy array. Rows already on a CUDA device (CuPy, torch CUDA
    tensors) are checked there and come back as a CuPy array: one device-to-host read of a
    flag per call, not a copy of the rows."""
    if on_cuda_device(vectors):
        arr = _as_device_float32(vectors)
        xp = get_array_module(arr)
    else:
        dtype = getattr(vectors, "dtype", None)  # NumPy's, or torch's (which says is_complex)
        if getattr(dtype, "is_complex", False) or (isinstance(dtype, np.dtype) and dtype.kind == "c"):
            # the cast would drop the imaginary part with only a warning
            raise InvalidEmbeddingError(f"vectors must be real numbers; got {dtype} values")
        try:
            with np.errstate(over="ignore"):  # a float64 value past float32's range: said below
                arr = np.asarray(vectors, dtype=np.float32)
        except (RuntimeError, TypeError, ValueError) as exc:  # RuntimeError: torch, a tensor that requires grad
            raise InvalidEmbeddingError(
                f"vectors must be a numeric (n, {dim}) array; got {type(vectors).__name__}: {exc}"
            ) from exc
        xp = np
    if arr.ndim == 1 and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidEmbeddingError(
            f"vectors must have shape (n, {dim}) to match the engine's embedding dimension; got {tuple(arr.shape)}"
        )
    finite = xp.isfinite(arr).all(axis=1)
    # float64: a float32 norm overflows to inf (large finite rows) or underflows to 0 (tiny rows)
    norms = xp.linalg.norm(arr.astype(xp.float64), axis=1)
    if not bool((finite & (norms > 1e-12)).all()):  # the one read back on a device
        finite, norms = to_numpy(finite), to_numpy(norms)
        # float64 rows that float32 cannot hold read as infinite or zero: say which it is
        source = np.asarray(vectors).reshape(arr.shape) if xp is np else None
        wide = source is not None and source.dtype.kind == "f" and source.dtype.itemsize > 4
        if not finite.all():
            bad = np.flatnonzero(~finite)
            if wide and np.isfinite(source[bad]).all():
                raise InvalidEmbeddingError(
                    f"vectors must fit in float32 (|x| up to 3.4e38); rows {bad[:10].tolist()} hold larger values "
                    f"({bad.size} rows in all). Only a row's direction counts: scale it down"
                )
            raise InvalidEmbeddingError(
                f"vectors must be finite; rows {bad[:10].tolist()} hold NaN or infinity ({bad.size} rows in all)"
            )
        bad = np.flatnonzero(norms <= 1e-12)
        if wide and (np.abs(source[bad]).max(axis=1) > 0).all():
            raise InvalidEmbeddingError(
                f"vectors must have a non-zero norm in float32; rows {bad[:10].tolist()} hold only values too small "
                "for it. Only a row's direction counts: scale it up"
            )
        raise InvalidEmbeddingError(f"vectors must have a non-zero norm; rows {bad[:10].tolist()} are zero")
    return xp.ascontiguousarray(arr / norms[:, None], dtype=xp.float32)


def check_vectors(accounts: Sequence[str], vectors: Any, dim: int, ts: Sequence[float | None] | None = None):
    """One unit row of ``dim`` (see :func:`check_embeddings`: host or device) per account;
    lengths must agree."""
    n = check_same_length(accounts=accounts, ts=ts, required=("accounts",))
    arr = check_embeddings(vectors, dim)
    if arr.shape[0] != n:
        raise InvalidEmbeddingError(f"expected one vector per account: {n} accounts but {arr.shape[0]} vectors")
    return arr


def check_accounts(accounts: Sequence[Any]) -> list[str]:
    """A sequence of valid account ids (see :func:`check_account`), as a list."""
    check_same_length(accounts=accounts, required=("accounts",))
    return [check_account(account) for account in accounts]


def check_items(
    accounts: Sequence[Any],
    ts: Sequence[Any] | None,
    prompts: Sequence[Any] | None = None,
    max_prompt_chars: int = 0,
    metas: Sequence[Any] | None = None,
) -> tuple[list[int], list[str], list[float | None], dict[int, ProbewatchError]]:
    """Check each item of a batch on its own: ``(valid indices, their prompts, their
    timestamps, {index: error})``. Lengths must agree (else the whole batch is rejected).
    ``metas`` (request metadata per item, see :func:`check_meta`) are checked in place.

    >>> good, texts, stamps, errors = check_items(["a", ""], [None, 5], ["hi", "there"], 100)
    >>> good, texts, stamps, type(errors[1]).__name__
    ([0], ['hi'], [None], 'InvalidAccountError')
    """
    check_same_length(accounts=accounts, prompts=prompts, ts=ts, metas=metas, required=("accounts",))
    good: list[int] = []
    texts: list[str] = []
    stamps: list[float | None] = []
    errors: dict[int, ProbewatchError] = {}
    for i, account in enumerate(accounts):
        try:
            check_account(account)
            text = check_prompt(prompts[i], max_prompt_chars) if prompts is not None else None
            stamp = check_timestamp(None if ts is None else ts[i])
            if metas is not None:
                check_meta(metas[i])
        except ProbewatchError as exc:
            errors[i] = exc
            continue
        good.append(i)
        stamps.append(stamp)
        if text is not None:
            texts.append(text)
    return good, texts, stamps, errors
