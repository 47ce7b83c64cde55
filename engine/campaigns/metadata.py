"""Request metadata: infrastructure that accounts share, kept only as salted hashes.

Campaigns were attributed through IP correlation, payment and key-creation patterns and
other infrastructure indicators. A caller that has them passes ``meta`` with a request;
probewatch keeps a keyed hash of each value (BLAKE2b with a salt drawn per engine and kept
in its snapshots), never the value, so neither a snapshot nor an API answer reveals an IP.
Accounts that share a value become a candidate group; how much that means is judged by
the group's content (:mod:`.scoring`): many ordinary users sit behind one corporate NAT.

>>> hasher = MetadataHasher(b"0" * 16)
>>> [key.split(":")[:2] for key, _ in hasher.indicators({"ip": "203.0.113.7", "org": "acme"})]
[['meta', 'ip'], ['meta', 'org']]
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from ..errors import InputError

# key -> what it is; every key is optional
META_KEYS: dict[str, str] = {
    "ip": "client IP address",
    "network": "network or autonomous system the request came from",
    "user_agent": "client user agent string",
    "org": "organisation or workspace the account belongs to",
    "payment": "payment instrument fingerprint",
    "key_created": "when the API key was created (any stable string, e.g. an ISO date or hour)",
}
# Values bystanders share with a campaign by coincidence (a proxy exit, an ISP, a browser
# build, a busy day for new keys); a payment instrument or an organisation ties its accounts
# to one customer by itself. The campaign layer tests members of coincidental groups harder.
COINCIDENTAL_META_KEYS = frozenset({"ip", "network", "user_agent", "key_created"})
MAX_META_VALUE_CHARS = 512
SALT_BYTES = 16


def check_meta(meta: object) -> dict[str, str] | None:
    """``meta`` as a dict of known keys to non-empty strings (or None); :class:`InputError`
    naming the key otherwise. Numbers are accepted and turned into strings."""
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise InputError(
            f"meta must be a mapping of {sorted(META_KEYS)} to strings, or None; got {type(meta).__name__}"
        )
    out: dict[str, str] = {}
    for key, value in meta.items():
        if key not in META_KEYS:
            raise InputError(f"unknown meta key {key!r}; expected some of {sorted(META_KEYS)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputError(f"meta[{key!r}] must be a string; got {type(value).__name__}")
        try:
            text = str(value)
        except ValueError:  # an int past Python's digit limit for str()
            from ..io.validation import decimal_digits  # here: validation imports this module

            raise InputError(
                f"meta[{key!r}] must be at most {MAX_META_VALUE_CHARS} characters; got an integer of about "
                f"{decimal_digits(value)} digits"
            ) from None
        if len(text) > MAX_META_VALUE_CHARS:
            raise InputError(f"meta[{key!r}] must be at most {MAX_META_VALUE_CHARS} characters; got {len(text)}")
        if not text.strip():
            raise InputError(f"meta[{key!r}] must not be empty or only whitespace; leave the key out instead")
        if "\x00" in text:
            raise InputError(f"meta[{key!r}] must be text without NUL characters")
        try:
            text.encode("utf-8")  # the hasher encodes it; refused here, before anything is stored
        except UnicodeEncodeError as exc:
            raise InputError(
                f"meta[{key!r}] must be valid Unicode; got a lone surrogate at position {exc.start} "
                "(text decoded with errors='surrogateescape'?)"
            ) from None
        out[key] = text
    return out or None


class MetadataHasher:
    """Turns checked meta into group keys ``meta:<kind>:<salted hash>``."""

    def __init__(self, salt: bytes | None = None):
        self.salt = os.urandom(SALT_BYTES) if salt is None else bytes(salt)

    def indicators(self, meta: Mapping[str, str] | None) -> list[tuple[str, str]]:
        """``[(key, kind)]`` for each value of ``meta``, in :data:`META_KEYS` order."""
        if not meta:
            return []
        out = []
        for kind in META_KEYS:
            value = meta.get(kind)
            if value is None:
                continue
            digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, key=self.salt, person=kind.encode()[:16])
            out.append((f"meta:{kind}:{digest.hexdigest()}", kind))
        return out
