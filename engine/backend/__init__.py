"""Where probewatch computes: the device, text embedding, and the per-account FAISS store.

:class:`Backend` is resolved once per engine (torch device, array module, FAISS and its
GPU resources) and handed to everything below the facade that touches a device.
"""

from .device import Backend, import_faiss, resolve_device
from .embedder import Embedder
from .threads import limit_host_blas

__all__ = ["Backend", "Embedder", "import_faiss", "limit_host_blas", "resolve_device"]
