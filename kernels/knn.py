"""Segmented exact top-k inner-product search: many accounts' k-NN in one call.

A batch of queries from many accounts is searched against the concatenation of those
accounts' histories (``base``, one contiguous segment per account, delimited by
``base_offsets``). Query ``i`` sees only the first ``query_visible[i]`` rows of its own
segment ``query_segment[i]``, which is how a query is searched against its account's
earlier queries, including the earlier ones of the same batch, before it is added.

On CUDA this is one kernel launch for the whole batch (one block per query) instead of
one FAISS search per account; :func:`segmented_topk_numpy` is its twin and the reference.
Results: ``sims`` (n_queries, k) in descending order, ``idx`` (n_queries, k) row indices
local to the segment; missing neighbours are ``-inf`` and ``-1``. Ties go to the lower
row index in both implementations.
"""

from __future__ import annotations

import numpy as np

from .backend import MAX_TOPK, THREADS_PER_BLOCK, compiled_once, cupy_module, get_array_module

_SEGMENTED_TOPK_SOURCE = r"""
// NVRTC compiles without <math.h>, so no INFINITY macro: -inf from its bit pattern.
#define NEG_INF __int_as_float((int)0xff800000u)

extern "C" __global__
void segmented_topk(const float* __restrict__ queries, const float* __restrict__ base,
                    const long long* __restrict__ base_offsets,
                    const int* __restrict__ query_segment, const int* __restrict__ query_visible,
                    const int n_queries, const int dim, const int k,
                    float* __restrict__ out_sims, long long* __restrict__ out_idx)
{
    const int q = blockIdx.x;
    const int tid = threadIdx.x;
    if (q >= n_queries) return;
    const long long start = base_offsets[query_segment[q]];
    const int n_rows = query_visible[q];
    const float* qv = queries + (long long)q * dim;

    // Each thread keeps a sorted top-k of the rows it scans (descending, lower index first on ties).
    float best_s[MAX_TOPK];
    int best_i[MAX_TOPK];
    for (int j = 0; j < k; ++j) { best_s[j] = NEG_INF; best_i[j] = -1; }
    for (int r = tid; r < n_rows; r += THREADS) {
        const float* bv = base + (start + r) * (long long)dim;
        float s = 0.f;
        for (int t = 0; t < dim; ++t) s += qv[t] * bv[t];
        if (s <= best_s[k - 1]) continue;  // rows arrive in increasing index: equal loses
        int pos = k - 1;
        while (pos > 0 && s > best_s[pos - 1]) {
            best_s[pos] = best_s[pos - 1]; best_i[pos] = best_i[pos - 1]; --pos;
        }
        best_s[pos] = s; best_i[pos] = r;
    }

    // k rounds of a block-wide arg-max over the threads' list heads.
    __shared__ float red_s[THREADS];
    __shared__ int red_i[THREADS];
    __shared__ int red_t[THREADS];
    int head = 0;
    for (int j = 0; j < k; ++j) {
        red_s[tid] = head < k ? best_s[head] : NEG_INF;
        red_i[tid] = head < k ? best_i[head] : -1;
        red_t[tid] = tid;
        __syncthreads();
        for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
            if (tid < stride) {
                const float so = red_s[tid + stride];
                const int io = red_i[tid + stride];
                const bool better = (io >= 0) && (red_i[tid] < 0 || so > red_s[tid] ||
                                                  (so == red_s[tid] && io < red_i[tid]));
                if (better) { red_s[tid] = so; red_i[tid] = io; red_t[tid] = red_t[tid + stride]; }
            }
            __syncthreads();
        }
        if (tid == 0) {
            out_sims[(long long)q * k + j] = red_i[0] >= 0 ? red_s[0] : NEG_INF;
            out_idx[(long long)q * k + j] = red_i[0];
        }
        if (red_i[0] >= 0 && tid == red_t[0]) ++head;
        __syncthreads();
    }
}
"""

_segmented_topk_kernel = compiled_once(
    lambda cp: cp.RawKernel(
        _SEGMENTED_TOPK_SOURCE,
        "segmented_topk",
        options=(f"-DMAX_TOPK={MAX_TOPK}", f"-DTHREADS={THREADS_PER_BLOCK}"),
    )
)


def _check_arguments(queries, base, base_offsets, query_segment, query_visible, k):
    if queries.ndim != 2 or base.ndim != 2 or queries.shape[1] != base.shape[1]:
        raise ValueError(f"queries and base must be 2-D with the same width; got {queries.shape} and {base.shape}")
    n_q = queries.shape[0]
    if query_segment.shape != (n_q,) or query_visible.shape != (n_q,):
        raise ValueError(
            f"query_segment and query_visible must have shape ({n_q},); got "
            f"{query_segment.shape} and {query_visible.shape}"
        )
    if not 1 <= k <= MAX_TOPK:
        raise ValueError(f"k must be between 1 and {MAX_TOPK}; got {k}")


def segmented_topk_numpy(queries, base, base_offsets, query_segment, query_visible, k):
    """NumPy twin of the CUDA kernel (and the reference the tests trust)."""
    queries = np.asarray(queries, dtype=np.float32)
    base = np.asarray(base, dtype=np.float32)
    base_offsets = np.asarray(base_offsets, dtype=np.int64)
    query_segment = np.asarray(query_segment, dtype=np.int64)
    query_visible = np.asarray(query_visible, dtype=np.int64)
    _check_arguments(queries, base, base_offsets, query_segment, query_visible, k)
    n_q = queries.shape[0]
    sims = np.full((n_q, k), -np.inf, dtype=np.float32)
    idx = np.full((n_q, k), -1, dtype=np.int64)
    # Queries of one segment share one matrix product; visibility is a per-row prefix.
    for seg in np.unique(query_segment):
        rows = np.flatnonzero(query_segment == seg)
        n_vis = query_visible[rows]
        width = int(n_vis.max()) if rows.size else 0
        if width == 0:
            continue
        start = int(base_offsets[seg])
        block = queries[rows] @ base[start : start + width].T  # (rows, width)
        block[np.arange(width)[None, :] >= n_vis[:, None]] = -np.inf
        take = min(k, width)
        # Stable sort on -sim: ties keep the lower index, like the kernel.
        order = np.argsort(-block, axis=1, kind="stable")[:, :take]
        top = np.take_along_axis(block, order, axis=1)
        valid = np.isfinite(top)
        sims[rows, :take] = np.where(valid, top, -np.inf)
        idx[rows, :take] = np.where(valid, order, -1)
    return sims, idx


def segmented_topk_cupy(queries, base, base_offsets, query_segment, query_visible, k):
    """One CUDA launch for all queries; arguments may be NumPy or CuPy, results are CuPy."""
    cp = cupy_module()
    queries = cp.ascontiguousarray(cp.asarray(queries, dtype=cp.float32))
    base = cp.ascontiguousarray(cp.asarray(base, dtype=cp.float32))
    base_offsets = cp.asarray(base_offsets, dtype=cp.int64)
    query_segment = cp.asarray(query_segment, dtype=cp.int32)
    query_visible = cp.asarray(query_visible, dtype=cp.int32)
    _check_arguments(queries, base, base_offsets, query_segment, query_visible, k)
    n_q, dim = queries.shape
    sims = cp.empty((n_q, k), dtype=cp.float32)
    idx = cp.empty((n_q, k), dtype=cp.int64)
    if n_q == 0:
        return sims, idx
    if base.shape[0] == 0:  # nothing visible anywhere; the kernel would read no rows either
        sims.fill(-cp.inf)
        idx.fill(-1)
        return sims, idx
    _segmented_topk_kernel()(
        (n_q,),
        (THREADS_PER_BLOCK,),
        (
            queries,
            base,
            base_offsets,
            query_segment,
            query_visible,
            np.int32(n_q),
            np.int32(dim),
            np.int32(k),
            sims,
            idx,
        ),
    )
    return sims, idx


def segmented_topk(queries, base, base_offsets, query_segment, query_visible, k):
    """Dispatch on the array module of ``queries``/``base``: CuPy kernel or NumPy twin."""
    if get_array_module(queries, base) is np:
        return segmented_topk_numpy(queries, base, base_offsets, query_segment, query_visible, k)
    return segmented_topk_cupy(queries, base, base_offsets, query_segment, query_visible, k)
