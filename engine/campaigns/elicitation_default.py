"""The shipped reasoning-trace elicitation head, when it matches the engine's embedding width."""

from __future__ import annotations

import logging

log = logging.getLogger("probewatch.campaigns")


def default_elicitation_head(dim: int):
    """The shipped head for ``dim``-d embeddings, or None (campaigns then run without it)."""
    try:
        from .elicitation import ElicitationHead

        head = ElicitationHead.default()
    except (ImportError, OSError) as exc:
        log.info("no reasoning-trace elicitation head: %s", exc)
        return None
    return head if head.dim == dim else None
