"""The one place that decides the device: CPU (NumPy, faiss-cpu) or a CUDA device (CuPy, faiss-gpu)."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from probewatch.kernels.backend import cupy_module

from ..errors import BackendUnavailableError, ConfigError

log = logging.getLogger(__name__)


# storage="int8": one byte per dimension, a whole number j in [-127, 127] of steps of 2r / 255,
# r = int8_range(d): ten times an isotropic unit vector's spread per component (1 / sqrt(d)), at
# most 1; what lies outside is clamped. all-MiniLM-L6-v2's largest component over 124k benchmark
# prompts is 0.344 of the 0.510 covered at d = 384, where a similarity then moves by ~1e-3 (std)
# and at most ~7e-3, against ~1e-5 for float16. (The grid of FAISS's QT_8bit_uniform quantizer
# over [-r, r], which 0.11 used: its rows, and so its snapshots, load unchanged.)
INT8_RANGE_SIGMAS = 10.0
INT8_MAX_CODE = 127


def int8_range(dim: int) -> float:
    """The largest component magnitude ``storage="int8"`` represents at dimension ``dim``."""
    return min(1.0, INT8_RANGE_SIGMAS / math.sqrt(dim))


def int8_step(dim: int) -> float:
    """The value of one int8 code step at dimension ``dim``."""
    return 2.0 * int8_range(dim) / 255.0


def int8_codes(rows: np.ndarray, step: float) -> np.ndarray:
    """float32 rows -> their int8 codes j (nearest whole number of steps, clamped), as float32."""
    codes = np.rint(np.asarray(rows, dtype=np.float32) * np.float32(1.0 / step))
    # in place, not np.clip: a lone query pays its wrapper's overhead three times
    np.maximum(codes, -INT8_MAX_CODE, out=codes)
    return np.minimum(codes, INT8_MAX_CODE, out=codes)


@functools.cache
def int8_index_class(faiss: ModuleType) -> type:
    """FAISS's flat index of signed 8-bit codes, taking and giving float rows.

    ``QT_8bit_direct_signed`` stores whole numbers in [-128, 127] and scans them with integer
    SIMD products: 2-2.7x faster than the float16 or 8-bit uniform scans on a 2-core Xeon at a
    10k history. It rounds its query to whole numbers too, so rows and queries go in as codes
    (:func:`int8_codes`) and similarities come out times step**2: exact for a query already on
    the grid, which the store makes every query before it searches.
    """

    if not hasattr(faiss.ScalarQuantizer, "QT_8bit_direct_signed"):
        raise BackendUnavailableError(
            f"storage='int8' needs faiss 1.9 or later (signed 8-bit codes); found faiss "
            f"{getattr(faiss, '__version__', '?')}. Upgrade faiss-cpu/faiss-gpu or use storage='float16'"
        )

    class Int8RowsIndex(faiss.IndexScalarQuantizer):
        step = 1.0  # declared on the class: faiss's wrappers refuse unknown instance attributes

        def __init__(self, dim: int):
            super().__init__(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)
            self.step = int8_step(dim)

        def add(self, rows):
            super().add(int8_codes(rows, self.step))

        def search(self, queries, k, **kwargs):
            sims, ids = super().search(int8_codes(queries, self.step), k, **kwargs)
            sims *= np.float32(self.step * self.step)
            return sims, ids

        def reconstruct_n(self, first=0, count=-1):
            return super().reconstruct_n(first, count) * np.float32(self.step)

        def reconstruct(self, key):
            return super().reconstruct(key) * np.float32(self.step)

        def decode_codes(self, stored: np.ndarray) -> np.ndarray:
            """Raw stored bytes (j + 128, as ``faiss_compat.byte_code_rows`` views them) -> codes j."""
            return np.subtract(stored, np.float32(128.0), dtype=np.float32)  # one pass, no uint8 -> float32 copy first

    return Int8RowsIndex


def import_faiss() -> ModuleType:
    """The ``faiss`` module, or an error that names the extra to install."""
    try:
        import faiss
    except ImportError as exc:
        raise BackendUnavailableError(
            "probewatch needs FAISS but neither faiss-cpu nor faiss-gpu is installed; run "
            "`pip install 'probewatch[cpu]'` (CPU) or `pip install 'probewatch[gpu]'` (CUDA 12)"
        ) from exc
    return faiss


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``/``cuda[:N]`` pass through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"device {device!r} was requested but torch sees no CUDA device (torch {torch.__version__}); "
                "use device='cpu' or install a CUDA build of torch"
            )
        return device
    raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}")


@dataclass(frozen=True)
class Backend:
    """A resolved device: the torch device string, the array module kernels run on, FAISS,
    and (with faiss-gpu) the one ``StandardGpuResources`` every account's index shares.

    On a CUDA device whose faiss has no GPU support (faiss-cpu: faiss-gpu wheels are built for
    one CUDA major version), kernels and short histories still run on the GPU and long
    histories are searched in host indexes; ``device_indexes`` says which.

    >>> Backend.host().device, Backend.host().xp.__name__
    ('cpu', 'numpy')
    """

    device: str  # "cpu", "cuda" or "cuda:N"
    xp: ModuleType  # numpy, or cupy on a CUDA device
    faiss: ModuleType
    gpu_resources: Any = None  # set when account indexes live on the device

    @classmethod
    def resolve(cls, device: str = "auto", temp_memory_bytes: int = 256 * 1024**2) -> Backend:
        """Resolve ``auto``/``cpu``/``cuda[:N]`` once; raises when the device's packages are missing."""
        resolved = resolve_device(device)
        if resolved == "cpu":
            return cls.host()
        faiss = import_faiss()
        xp = cupy_module()
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            log.warning(
                "faiss %s has no GPU support here: account histories longer than segmented_max_history are "
                "searched in host memory (install probewatch[gpu], not faiss-cpu, to keep them on %s)",
                getattr(faiss, "__version__", "?"),
                resolved,
            )
            return cls(resolved, xp, faiss, None)
        resources = faiss.StandardGpuResources()
        resources.setTempMemory(int(temp_memory_bytes))  # bounded scratch memory for every search
        return cls(resolved, xp, faiss, resources)

    @classmethod
    def host(cls) -> Backend:
        """The CPU backend (calibration always runs here)."""
        return cls("cpu", np, import_faiss())

    @property
    def on_gpu(self) -> bool:
        """Kernels and embeddings run on a CUDA device (CuPy arrays)."""
        return self.xp is not np

    @property
    def device_indexes(self) -> bool:
        """Account FAISS indexes are kept on the device (faiss-gpu)."""
        return self.gpu_resources is not None

    @property
    def gpu_id(self) -> int:
        return int(self.device.partition(":")[2] or 0)

    @property
    def kind(self) -> str:
        """``cpu`` or ``cuda``, without the device number."""
        return "cuda" if self.on_gpu else "cpu"

    def new_index(self, dim: int, storage: str):
        """An empty host index: exact inner product over float32 rows, float16 codes or 8-bit
        codes (see :func:`int8_index_class`)."""
        if storage == "float16":
            return self.faiss.IndexScalarQuantizer(
                dim, self.faiss.ScalarQuantizer.QT_fp16, self.faiss.METRIC_INNER_PRODUCT
            )
        if storage == "int8":
            return int8_index_class(self.faiss)(dim)
        return self.faiss.IndexFlatIP(dim)

    def index_to_device(self, host_index, storage: str):
        """A GPU copy of a host index; float16 and int8 storage are float16 there.

        FAISS has no GPU flat scalar-quantizer index, so a float16 or int8 host index is decoded
        into a flat index and cloned with ``useFloat16``: a GPU flat index storing float16.
        """
        if isinstance(host_index, self.faiss.IndexScalarQuantizer):
            flat = self.faiss.IndexFlatIP(host_index.d)
            if host_index.ntotal:
                flat.add(host_index.reconstruct_n(0, host_index.ntotal))
            host_index = flat
        options = self.faiss.GpuClonerOptions()
        options.useFloat16 = storage != "float32"
        return self.faiss.index_cpu_to_gpu(self.gpu_resources, self.gpu_id, host_index, options)
