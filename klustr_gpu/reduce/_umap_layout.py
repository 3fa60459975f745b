"""UMAP's layout optimisation, parallel *and* deterministic.

umap-learn runs its stochastic gradient descent on one thread whenever a seed is set, because
its parallel version lets threads race on the same points (Hogwild): two runs give two maps.
At 100,000 points those 200 single-threaded epochs are most of the time of a seeded UMAP.

Here the edges (sorted by their head point, as umap-learn builds them) are cut into
``partitions`` contiguous blocks, and block *p* owns the points whose edges it holds. Within an
epoch each block runs umap-learn's own update rule, in umap-learn's order, on its own points,
which it reads and moves as it goes; a point owned by another block is read from the snapshot
taken at the start of the epoch, and what this block would move it by is kept in the block's own
buffer, added in block order when the epoch ends. No block ever reads what another is writing,
so the result depends on the seed and ``partitions`` only, never on the number of threads or
their timing. With one partition it is umap-learn's sequential algorithm, step for step
(``tests/test_umap_layout.py`` checks that against umap-learn itself).

Import this module only after :func:`klustr_gpu.reduce._numba.import_umap` (numba's cache
folder is set there).
"""
from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np
from umap.layouts import rdist
from umap.utils import tau_rand_int

#: Blocks of edges per epoch. A constant, not the core count, so a seed gives the same map on
#: every machine; 16 keeps 2-16 cores busy.
PARTITIONS = 16
#: Below this many points the sequential optimiser (one partition) is used: there is too little
#: work per epoch for threads to pay.
MIN_PARALLEL_POINTS = 4096

_lock = threading.Lock()


@numba.njit(fastmath=True, cache=True)
def _clip(val):
    if val > 4.0:
        return 4.0
    elif val < -4.0:
        return -4.0
    return val


@numba.njit(fastmath=True, parallel=True, cache=True, locals={"dist_squared": numba.types.float32})
def _epoch(emb, snap, delta, head, tail, e_bounds, v_bounds, n_vertices, epochs_per_sample,
           a, b, rng_state_per_sample, gamma, dim, alpha, epochs_per_negative_sample,
           epoch_of_next_negative_sample, epoch_of_next_sample, n):
    n_blocks = e_bounds.shape[0] - 1
    for p in numba.prange(n_blocks):
        v_lo = v_bounds[p]
        v_hi = v_bounds[p + 1]
        for i in range(e_bounds[p], e_bounds[p + 1]):
            if epoch_of_next_sample[i] > n:
                continue
            j = head[i]
            k = tail[i]
            own = v_lo <= k and k < v_hi
            other = emb[k] if own else snap[k]
            dist_squared = rdist(emb[j], other)
            if dist_squared > 0.0:
                grad_coeff = -2.0 * a * b * pow(dist_squared, b - 1.0)
                grad_coeff /= a * pow(dist_squared, b) + 1.0
            else:
                grad_coeff = 0.0
            for d in range(dim):
                grad_d = _clip(grad_coeff * (emb[j, d] - other[d]))
                emb[j, d] += grad_d * alpha
                if own:
                    emb[k, d] += -grad_d * alpha
                else:
                    delta[p, k, d] += -grad_d * alpha
            epoch_of_next_sample[i] += epochs_per_sample[i]

            n_neg_samples = int((n - epoch_of_next_negative_sample[i]) / epochs_per_negative_sample[i])
            for _ in range(n_neg_samples):
                k = tau_rand_int(rng_state_per_sample[j]) % n_vertices
                other = emb[k] if (v_lo <= k and k < v_hi) else snap[k]
                dist_squared = rdist(emb[j], other)
                if dist_squared > 0.0:
                    grad_coeff = 2.0 * gamma * b
                    grad_coeff /= (0.001 + dist_squared) * (a * pow(dist_squared, b) + 1)
                elif j == k:
                    continue
                else:
                    grad_coeff = 0.0
                for d in range(dim):
                    if grad_coeff > 0.0:
                        grad_d = _clip(grad_coeff * (emb[j, d] - other[d]))
                    else:
                        grad_d = 0.0
                    emb[j, d] += grad_d * alpha
            epoch_of_next_negative_sample[i] += n_neg_samples * epochs_per_negative_sample[i]


@numba.njit(fastmath=True, parallel=True, cache=True)
def _apply(emb, delta):
    n_blocks, n, dim = delta.shape
    for v in numba.prange(n):
        for p in range(n_blocks):
            for d in range(dim):
                emb[v, d] += delta[p, v, d]
                delta[p, v, d] = 0.0


def blocks(head: np.ndarray, n_vertices: int, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Edge and point boundaries of about ``partitions`` blocks of equal edge counts, cut only
    where the head point changes (``head`` sorted), so each point's edges are in one block."""
    n_edges = head.shape[0]
    cuts = np.searchsorted(head, head[np.linspace(0, n_edges, partitions + 1)[1:-1].astype(np.int64)],
                           side="left") if n_edges and partitions > 1 else np.empty(0, np.int64)
    e_bounds = np.unique(np.concatenate([[0], cuts, [n_edges]])).astype(np.int64)
    v_bounds = np.concatenate([[0], head[e_bounds[1:-1]], [n_vertices]]).astype(np.int64)
    return e_bounds, v_bounds


def optimize_layout(head_embedding, tail_embedding, head, tail, n_epochs, n_vertices,
                    epochs_per_sample, a, b, rng_state, gamma=1.0, initial_alpha=1.0,
                    negative_sample_rate=5.0, *, partitions: int = PARTITIONS, _kernels=None):
    """umap-learn's ``optimize_layout_euclidean`` (plain UMAP, ``move_other=True``, one
    embedding) over ``partitions`` deterministic blocks; ``head_embedding`` is changed in place
    and returned."""
    order = None
    if head.shape[0] and np.any(np.diff(head) < 0):
        order = np.argsort(head, kind="stable")
        head, tail, epochs_per_sample = head[order], tail[order], epochs_per_sample[order]
    emb = head_embedding
    dim = emb.shape[1]
    e_bounds, v_bounds = blocks(np.ascontiguousarray(head), n_vertices, max(1, int(partitions)))
    n_blocks = e_bounds.shape[0] - 1
    snap = emb.copy() if n_blocks > 1 else emb
    delta = np.zeros((n_blocks, emb.shape[0], dim) if n_blocks > 1 else (1, 1, dim), dtype=np.float32)

    epochs_per_sample = np.ascontiguousarray(epochs_per_sample)
    epochs_per_negative_sample = epochs_per_sample / negative_sample_rate
    epoch_of_next_negative_sample = epochs_per_negative_sample.copy()
    epoch_of_next_sample = epochs_per_sample.copy()
    # umap-learn's per-point generator states, seeded the same way
    rng_state_per_sample = np.full((emb.shape[0], len(rng_state)), rng_state, dtype=np.int64) + \
        emb[:, 0].astype(np.float64).view(np.int64).reshape(-1, 1)
    epoch, apply = _kernels or (_epoch, _apply)
    alpha = initial_alpha
    for n in range(int(n_epochs)):
        if n_blocks > 1:
            snap[:] = emb
        epoch(emb, snap, delta, head, tail, e_bounds, v_bounds, n_vertices, epochs_per_sample,
               a, b, rng_state_per_sample, gamma, dim, alpha, epochs_per_negative_sample,
               epoch_of_next_negative_sample, epoch_of_next_sample, n)
        if n_blocks > 1:
            apply(emb, delta)
        alpha = initial_alpha * (1.0 - (float(n) / float(n_epochs)))
    return emb


@contextlib.contextmanager
def deterministic_parallel_layout(partitions: int = PARTITIONS, threads: int | None = None):
    """Within this block, umap-learn's fitting uses :func:`optimize_layout` for its plain
    (Euclidean-output, non-densMAP) layout; anything else goes to umap-learn's own function.

    umap-learn has no hook for its optimiser, so its module's name is pointed here for the
    duration (under a lock: one patched fit at a time in this process)."""
    import umap.umap_ as umap_

    original = umap_.optimize_layout_euclidean

    def patched(head_embedding, tail_embedding, head, tail, n_epochs, n_vertices, epochs_per_sample,
                a, b, rng_state, gamma=1.0, initial_alpha=1.0, negative_sample_rate=5.0,
                parallel=False, verbose=False, densmap=False, densmap_kwds=None, tqdm_kwds=None,
                move_other=False):
        if (densmap or not move_other or head_embedding is not tail_embedding
                or isinstance(n_epochs, list)):
            return original(head_embedding, tail_embedding, head, tail, n_epochs, n_vertices,
                            epochs_per_sample, a, b, rng_state, gamma, initial_alpha,
                            negative_sample_rate, parallel=parallel, verbose=verbose,
                            densmap=densmap, densmap_kwds=densmap_kwds, tqdm_kwds=tqdm_kwds,
                            move_other=move_other)
        # a seeded umap-learn fit has just set numba to one thread; the blocks may use more
        numba.set_num_threads(n_threads)
        return optimize_layout(head_embedding, tail_embedding, head, tail, n_epochs, n_vertices,
                               epochs_per_sample, a, b, rng_state, gamma, initial_alpha,
                               negative_sample_rate, partitions=partitions)

    with _lock:
        before = numba.get_num_threads()
        n_threads = max(1, min(int(threads or numba.config.NUMBA_NUM_THREADS), numba.config.NUMBA_NUM_THREADS))
        umap_.optimize_layout_euclidean = patched
        try:
            yield
        finally:
            umap_.optimize_layout_euclidean = original
            numba.set_num_threads(before)
