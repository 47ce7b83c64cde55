"""Snapshots of an engine's complete state, and calibration files.

A snapshot is an uncompressed ``.npz`` (NumPy arrays only, never pickles) holding a JSON
header with the format name and version, the configuration, every account's scalar state,
the reference, the calibration tables, and every account's history vectors (copied from
its FAISS index through the host, so a GPU engine's snapshot loads on a CPU and back).
It is written from :meth:`Engine.state_dict` and read back into the same dictionary for
:meth:`Engine.from_state`; nothing here knows the engine's insides.
Files are written to a temporary name in the same folder, flushed, fsynced, then renamed
over the target: a crash leaves the old snapshot or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..campaigns.scoring import GroupCalibration
from ..config import EngineConfig
from ..detect.features import AccountState
from ..detect.prompt_memory import FRAME_MEMORY, FRAME_THREADS, SENT_MEMORY
from ..detect.reference import BenignReference
from ..detect.scoring import BenignModel, Calibration
from ..errors import CalibrationError, ConfigError, SnapshotError
from ..types import Level, Reason
from .npz_files import NPZ_SIGNATURES, leading_bytes
from .validation import MAX_ACCOUNT_ID_LENGTH

SNAPSHOT_FORMAT = "probewatch-snapshot"
CALIBRATION_FORMAT = "probewatch-calibration"
FORMAT_VERSION = 1


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable (the directory entry itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SnapshotError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():  # os.replace would fail only after the whole file was written
        raise SnapshotError(f"cannot write {path}: it is a folder; give a file path, e.g. {path / 'probewatch.npz'}")
    if path.exists() and not path.is_file():  # os.replace would put a file where a FIFO or device was
        raise SnapshotError(
            f"cannot write {path}: it is not a regular file (a pipe, socket or device); give a file path"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _header(kind: str, body: dict[str, Any]) -> np.ndarray:
    body = {"format": kind, "version": FORMAT_VERSION, **body}
    return np.frombuffer(json.dumps(body).encode("utf-8"), dtype=np.uint8)


def _open(path: str | Path, kind: str):
    """(header, arrays) of a probewatch file of ``kind``, or SnapshotError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"no {kind} file at {path}")
    start = leading_bytes(path, f"{kind} file")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array, not an archive
            raise SnapshotError(
                f"{path} is a single .npy array, not a {kind} (expected a .npz archive written by probewatch)"
            )
        with data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, zlib.error) as exc:
        damaged = " (it starts like one: damaged or cut short)" if start.startswith(NPZ_SIGNATURES) else ""
        # NumPy's advice for files it takes for pickles is how to load them unsafely: never passed on
        detail = "it holds no readable array" if "allow_pickle" in str(exc) else str(exc)
        raise SnapshotError(
            f"{path} is not a readable {kind} file (expected a .npz written by probewatch){damaged}: {detail}"
        ) from exc
    if "header" not in arrays:
        raise SnapshotError(f"{path} is a .npz file but not a {kind}: it has no probewatch header")
    try:
        header = json.loads(arrays["header"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: the header is corrupt ({exc})") from exc
    if not isinstance(header, dict):
        raise SnapshotError(f"{path}: the header is corrupt (expected a JSON object, got {type(header).__name__})")
    if header.get("format") != kind:
        raise SnapshotError(f"{path} is a {header.get('format')!r} file, expected {kind!r}")
    if header.get("version") != FORMAT_VERSION:
        raise SnapshotError(
            f"{path} has format version {header.get('version')}; this probewatch reads version {FORMAT_VERSION}"
        )
    return header, arrays


def _benign_model(path, header, arrays) -> BenignModel:
    try:
        meta = header["calibration"]
        if not isinstance(meta, dict):
            raise TypeError(f"the header's calibration entry is a {type(meta).__name__}, expected an object")
        groups = GroupCalibration.from_arrays(arrays, meta.get("source", "")) if "group_max_scores" in arrays else None
        return BenignModel(BenignReference.from_arrays(arrays), Calibration.from_arrays(arrays, meta), groups)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise SnapshotError(f"{path}: reference or calibration arrays are missing or malformed ({exc})") from exc
    except CalibrationError as exc:
        raise SnapshotError(f"{path}: {exc}") from exc


def _benign_arrays(benign: BenignModel) -> dict[str, np.ndarray]:
    groups = benign.groups.to_arrays() if benign.groups is not None else {}
    return {**benign.reference.to_arrays(), **benign.calibration.to_arrays(), **groups}


def write_calibration(path: str | Path, benign: BenignModel) -> None:
    arrays = {
        "header": _header(CALIBRATION_FORMAT, {"calibration": benign.calibration.meta()}),
        **_benign_arrays(benign),
    }
    _atomic_write(path, arrays)


def read_calibration(path: str | Path) -> BenignModel:
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(
            f"no calibration file at {path}; the default ships inside the probewatch package "
            "(reinstall it) or build one with scripts/build_default_calibration.py"
        )
    header, arrays = _open(path, CALIBRATION_FORMAT)
    return _benign_model(path, header, arrays)


def write_snapshot(path: str | Path, state: dict[str, Any]) -> None:
    """Write an :meth:`Engine.state_dict` atomically."""
    config: EngineConfig = state["config"]
    benign: BenignModel = state["benign"]
    states: list[AccountState] = state["states"]
    header = {
        "config": config.to_dict(),
        "calibration": benign.calibration.meta(),
        "observations": state["observations"],
        "repeats": int(state.get("repeats", 0)),
        "dim": benign.reference.dim,
        "accounts": list(state["accounts"]),
        # NaN is not JSON: timestamps are written as null; levels as their string value.
        "scalars": [[_json_scalar(getattr(s, name)) for name in AccountState.SCALARS] for s in states],
        "histories": [s.history for s in states],
        "clock": _json_scalar(float(state.get("clock", math.nan))),
        "evicted": {a: [*r[:5], [x.to_dict() for x in r[5]]] for a, r in (state.get("evicted") or {}).items()},
        "carried_reasons": {a: [x.to_dict() for x in r] for a, r in (state.get("carried_reasons") or {}).items()},
    }
    arrays = {
        "header": _header(SNAPSHOT_FORMAT, header),
        "store_offsets": state["offsets"],
        # an int8 row is a whole number of code steps, which float16 keeps to within 1/16 of a
        # step: re-encoding a loaded row gives its code back
        "store_vectors": state["vectors"].astype(np.float32 if config.storage == "float32" else np.float16),
        **_benign_arrays(benign),
    }
    for name in AccountState.ARRAYS:
        if states:
            arrays[f"state_{name}"] = np.stack([getattr(s, name) for s in states])
    # frame-thread vectors for the accounts that hold them, by their position among the accounts
    framed = [i for i, s in enumerate(states) if s.frame_vectors is not None]
    if framed:
        arrays["state_frame_accounts"] = np.asarray(framed, dtype=np.int64)
        arrays["state_frame_vectors"] = np.stack([states[i].frame_vectors for i in framed])
    if states:  # each account's sent memory, oldest first, one after another (see AccountState.sent_count)
        arrays["state_sent_digests"] = np.concatenate([s.sent_in_order() for s in states])
    boilerplate = state.get("boilerplate") or {}
    if boilerplate:  # each account's last long prompt's segment checksums, one after another
        header["boilerplate"] = list(boilerplate)
        arrays["boilerplate_offsets"] = np.cumsum([0] + [len(v) for v in boilerplate.values()], dtype=np.int64)
        arrays["boilerplate_checksums"] = np.concatenate(list(boilerplate.values())).astype(np.uint32)
    population = state.get("population")
    if population is not None:
        header["population"] = True
        arrays.update({f"population_{name}": value for name, value in population.items()})
    campaigns = state.get("campaigns")
    if campaigns is not None:
        header["campaigns"] = campaigns["header"]
        arrays.update({f"campaign_{name}": value for name, value in campaigns["arrays"].items()})
    arrays["header"] = _header(SNAPSHOT_FORMAT, header)
    _atomic_write(path, arrays)


def _reasons(stored: Any) -> tuple[Reason, ...]:
    """Reasons kept for an evicted account, from their ``Reason.to_dict()`` form."""
    return tuple(
        Reason(
            feature=str(r["feature"]),
            value=float(r["value"]),
            benign_percentile=float(r["benign_percentile"]),
            direction=str(r["direction"]),
            deviation=float(r["deviation"]),
            description=str(r.get("description", "")),
        )
        for r in stored
    )


def _json_scalar(value: Any) -> Any:
    if isinstance(value, Level):
        return value.value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_snapshot(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The :meth:`Engine.state_dict` a snapshot holds, with runtime ``overrides`` applied to
    its configuration; a :class:`SnapshotError` says what is wrong with a bad file."""
    header, arrays = _open(path, SNAPSHOT_FORMAT)
    benign = _benign_model(path, header, arrays)
    try:
        stored_config = dict(header["config"])
        stored_config.pop("extra", None)  # an unused field snapshots of 0.1.0 carry
        config = EngineConfig.from_dict(stored_config)
        if overrides:
            config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
        ids = _account_ids(path, header["accounts"])
        scalars = header["scalars"]
        histories = header["histories"]
        offsets = np.asarray(arrays["store_offsets"], dtype=np.int64)
        flat = np.asarray(arrays["store_vectors"], dtype=np.float32)
        if offsets.shape != (len(ids) + 1,) or offsets[-1] != flat.shape[0] or len(scalars) != len(ids):
            raise SnapshotError(
                f"{path}: account tables disagree ({len(ids)} ids, offsets {offsets.shape}, {flat.shape[0]} vectors)"
            )
        if offsets[0] != 0 or (np.diff(offsets) < 0).any():
            raise SnapshotError(f"{path}: account history offsets must start at 0 and never decrease")
        if flat.ndim != 2 or flat.shape[1] != benign.reference.dim:
            raise SnapshotError(f"{path}: stored vectors have shape {flat.shape}, expected (n, {benign.reference.dim})")
        if not np.isfinite(flat).all():  # observe refuses such rows; a file must not bring them in
            raise SnapshotError(f"{path}: stored history vectors hold NaN or infinity")
        # arrays newer than the snapshot (AccountState.SINCE_0_12) start at their defaults
        state_arrays = (
            {
                name: arrays[f"state_{name}"]
                for name in AccountState.ARRAYS
                if name not in AccountState.SINCE_0_12 or f"state_{name}" in arrays
            }
            if ids
            else {}
        )
        states = [
            _account_state(
                path,
                account,
                config.window,
                benign.reference.n_cells,
                scalars[i],
                histories[i],
                {name: values[i] for name, values in state_arrays.items()},
            )
            for i, account in enumerate(ids)
        ]
        rows = np.diff(offsets)
        for account, state, held in zip(ids, states, rows.tolist(), strict=True):
            if held > state.n:  # an account keeps at most the queries it sent
                raise SnapshotError(f"{path}: account {account!r} has {held} stored vectors but {state.n} queries")
        _frame_vectors(path, arrays, states, benign.reference.dim)
        _sent_digests(path, arrays, states)
        observations = int(header.get("observations", 0))
        repeats = int(header.get("repeats", 0))  # snapshots before 0.18.0 have none
        campaigns = None
        if "campaigns" in header:  # snapshots of 0.2.0 and earlier have none: the layer starts empty
            prefix = "campaign_"
            campaigns = {
                "header": header["campaigns"],
                "arrays": {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)},
            }
        population = None
        if header.get("population"):  # snapshots before 0.3.0 have none: learning starts over
            population = {name: arrays[f"population_{name}"] for name in ("rows", "ns", "owners", "admitted")}
            if "population_vouched" in arrays:  # snapshots from before known-benign marks have none
                population["vouched"] = arrays["population_vouched"]
        clock = header.get("clock")
        clock = math.nan if clock is None else float(clock)
        # records of 0.3.0 snapshots have no reasons
        evicted = {
            str(a): (str(r[0]), float(r[1]), float(r[2]), int(r[3]), int(r[4]), _reasons(r[5] if len(r) > 5 else []))
            for a, r in _mapping(header, "evicted").items()
        }
        carried_reasons = {str(a): _reasons(r) for a, r in _mapping(header, "carried_reasons").items()}
        boilerplate = _boilerplate(path, header, arrays)
    except ConfigError as exc:  # before ValueError, which ConfigError subclasses
        raise SnapshotError(f"{path}: stored configuration is invalid ({exc})") from exc
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise SnapshotError(f"{path}: snapshot content is malformed ({exc})") from exc
    return {
        "config": config,
        "benign": benign,
        "observations": observations,
        "repeats": repeats,
        "accounts": ids,
        "offsets": offsets,
        "vectors": flat,
        "states": states,
        "campaigns": campaigns,
        "population": population,
        "clock": clock,
        "evicted": evicted,
        "carried_reasons": carried_reasons,
        "boilerplate": boilerplate,
    }


def _boilerplate(path, header: dict[str, Any], arrays) -> dict[str, np.ndarray]:
    """The accounts' boilerplate memory (see probewatch.detect.boilerplate); snapshots before
    0.20.0 have none, and their accounts read their next long prompt whole."""
    if "boilerplate" not in header:
        return {}
    ids = _account_ids(path, header["boilerplate"])
    offsets = np.asarray(arrays["boilerplate_offsets"])
    sums = np.asarray(arrays["boilerplate_checksums"])
    if offsets.dtype.kind not in "iu" or sums.dtype != np.uint32 or sums.ndim != 1:
        raise SnapshotError(
            f"{path}: boilerplate tables have dtypes {offsets.dtype}/{sums.dtype}, expected integer offsets "
            "and uint32 checksums"
        )
    if offsets.shape != (len(ids) + 1,) or offsets[0] != 0 or offsets[-1] != len(sums) or (np.diff(offsets) < 0).any():
        raise SnapshotError(
            f"{path}: boilerplate offsets {offsets.shape} disagree with {len(ids)} accounts and {len(sums)} checksums"
        )
    return {a: sums[offsets[i] : offsets[i + 1]].copy() for i, a in enumerate(ids)}


def _account_ids(path, stored: Any) -> list[str]:
    """The header's account ids, each once and each one that observe has always accepted. The
    later rule against format and line-separator characters is not applied here, so a snapshot
    taken before it still loads."""
    if not isinstance(stored, list):
        raise TypeError(f"the header's accounts entry is a {type(stored).__name__}, expected a list")
    for i, account in enumerate(stored):
        problem = _stored_id_problem(account)
        if problem is not None:
            raise SnapshotError(f"{path}: stored account {i} has an invalid id: {problem}")
    seen: set[str] = set()
    for account in stored:
        if account in seen:
            raise SnapshotError(f"{path}: account {account!r} is stored twice")
        seen.add(account)
    return list(stored)


def _stored_id_problem(account: Any) -> str | None:
    if not isinstance(account, str):
        return f"an account id must be a str; got {type(account).__name__}"
    if not account.strip() or len(account) > MAX_ACCOUNT_ID_LENGTH:
        return (
            f"an account id must hold 1 to {MAX_ACCOUNT_ID_LENGTH} characters, not only whitespace; got {len(account)}"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in account):
        return f"an account id must not contain control characters; got {account[:60]!r}"
    try:
        account.encode("utf-8")
    except UnicodeEncodeError:
        return f"an account id must be valid Unicode; got lone surrogates in {account[:60]!r}"
    return None


def _mapping(header: dict[str, Any], name: str) -> dict[str, Any]:
    value = header.get(name, {})
    if not isinstance(value, dict):
        raise TypeError(f"the header's {name} entry is a {type(value).__name__}, expected an object")
    return value


def _frame_vectors(path, arrays, states: list[AccountState], dim: int) -> None:
    """Give back the frame-thread vectors of the accounts that held them (snapshots before
    0.17.0 have none: no account has a thread)."""
    if "state_frame_accounts" in arrays:
        _put_frame_vectors(path, arrays, states, dim)
    if states and "state_part_noted" not in arrays:
        # before 0.17.0: the ring's prompts are not numbered, so they count as the latest (no
        # thread starts until the ring has turned over and its span is known)
        for state in states:
            state.part_noted[:] = int(state.probes[0]) & 0xFFFFFFFF
    for state in states:
        if state.frame_vectors is None and state.frame_parts.any():
            raise SnapshotError(f"{path}: an account has frame threads but the snapshot holds no vectors for them")


def _sent_digests(path, arrays, states: list[AccountState]) -> None:
    """Give back each account's sent memory (snapshots before 0.18.0 have neither the counts nor
    the digests: every account starts with an empty memory)."""
    counts = [int(s.sent_count[0]) for s in states]
    if "state_sent_digests" not in arrays:
        if any(counts):  # a 0.18.0 snapshot (it has the counts) that lost its digests
            raise SnapshotError(f"{path}: accounts count prompts in their sent memory but the snapshot holds none")
        return
    for state, count in zip(states, counts, strict=True):
        if not 0 <= count <= state.n:  # each prompt judged as new is one of the account's queries
            raise SnapshotError(f"{path}: an account's sent memory counts {count} prompts for {state.n} queries")
    flat = np.asarray(arrays["state_sent_digests"])
    held = [min(c, SENT_MEMORY) for c in counts]
    if flat.ndim != 2 or flat.shape != (sum(held), 2) or flat.dtype != np.int64:
        raise SnapshotError(
            f"{path}: sent-prompt digests have shape {flat.shape} ({flat.dtype}); the accounts' counts hold "
            f"{sum(held)}, expected ({sum(held)}, 2) int64"
        )
    for state, part in zip(states, np.split(flat, np.cumsum(held)[:-1]) if states else [], strict=True):
        state.load_sent(part)


def _put_frame_vectors(path, arrays, states: list[AccountState], dim: int) -> None:
    owners = np.asarray(arrays["state_frame_accounts"])
    vectors = np.asarray(arrays["state_frame_vectors"])
    expected = (owners.shape[0], FRAME_THREADS, FRAME_MEMORY, dim)
    if owners.ndim != 1 or vectors.shape != expected or vectors.dtype != np.int8:
        raise SnapshotError(
            f"{path}: frame-thread vectors have shape {vectors.shape} ({vectors.dtype}) for {owners.shape} "
            f"accounts, expected {expected} int8"
        )
    if owners.size and (owners.min() < 0 or owners.max() >= len(states) or np.unique(owners).size != owners.size):
        raise SnapshotError(f"{path}: frame-thread vectors name accounts outside the {len(states)} stored")
    for i, rows in zip(owners.tolist(), vectors, strict=True):
        states[i].frame_vectors = np.array(rows)


def _account_state(
    path, account: str, window: int, n_cells: int, scalars: list, history: list, arrays: dict[str, np.ndarray]
) -> AccountState:
    state = AccountState(window, n_cells)
    for name, value in zip(AccountState.SCALARS, scalars, strict=True):
        setattr(state, name, float("nan") if value is None else value)
    state.level = Level(state.level)
    for name, src in arrays.items():
        dst = getattr(state, name)
        if name == "gram_stats" and src.shape == (3,):  # 0.2.0 kept three; the fourth refreshes on schedule
            src = np.concatenate([src, np.full(dst.size - 3, np.nan)])
        if src.shape != dst.shape:
            raise SnapshotError(
                f"{path}: state array {name} of {account!r} has shape {src.shape}, expected {dst.shape}"
            )
        dst[...] = src
    state.history = [(int(n), float(r)) for n, r in history]
    return state
