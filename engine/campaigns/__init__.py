"""Cross-account campaign detection: linking signals, candidate groups, group judging.

One folder, one job per module:

* :mod:`.templates`, :mod:`.metadata`: linking signals from a query's text (template
  anchors) and its request metadata (salted hashes); payload regions and timing come from
  the vectors and timestamps inside :mod:`.layer`;
* :mod:`.elicitation`: a per-query reasoning-trace elicitation probability;
* :mod:`.groups`: a candidate group's pooled sums and the pair statistics they give;
* :mod:`.scoring`: group features judged against benign groups; :mod:`.fitting` makes
  the benign groups from benign accounts;
* :mod:`.layer`: :class:`CampaignLayer`, fed by the pipeline after every batch.
"""

from .layer import CampaignLayer
from .metadata import META_KEYS, check_meta
from .scoring import GroupCalibration

__all__ = ["META_KEYS", "CampaignLayer", "GroupCalibration", "check_meta"]
