"""The first check on a file probewatch is asked to load: is it a NumPy archive at all?

``np.load`` answers a file that is neither a .npz nor a .npy by trying it as a pickle, and with
``allow_pickle=False`` its error then advises loading the file "unsafely". A snapshot, a
calibration or an elicitation head may come from anywhere; the message should say what the file
is not and what it starts with, never how to unpickle it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SnapshotError

# A .npz is a zip archive (local file header, or the end record of an empty archive); .npy has its own.
# NumPy opens as a zip only a file starting with one of these; anything else it tries as a pickle.
NPZ_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
NPY_SIGNATURE = b"\x93NUMPY"


def leading_bytes(path: Path, what: str) -> bytes:
    """The first bytes of ``path``; SnapshotError, naming ``what`` was expected, when the file
    cannot be read or does not start like a NumPy archive or array."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(NPY_SIGNATURE))
    except OSError as exc:
        raise SnapshotError(f"{path} cannot be read: {exc}") from exc
    if not start.startswith((*NPZ_SIGNATURES, NPY_SIGNATURE)):
        raise SnapshotError(
            f"{path} is not a readable {what}: expected a .npz archive written by probewatch (a zip file, "
            f"starting with b'PK'); its first bytes are {start!r}"
        )
    return start
