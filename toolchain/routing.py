"""The integer per-patch routing decision (docs/design.md "Per-patch routing"), in numpy.

One algorithm, three implementations: the Keras training graph
(`toolchain.models.graph_routing`), this reference (host reference, tests, firmware test
vectors) and the firmware's C code. They must agree index for index.
"""
from __future__ import annotations

import math

import numpy as np


def capacity(num_patches: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """C = min(N, ceil(capacity_factor * top_k * N / E)); same as `MoEConfig.capacity`."""
    from fractions import Fraction

    exact = Fraction(str(capacity_factor)) * top_k * num_patches / num_experts
    return int(min(num_patches, math.ceil(exact)))


def route(scores, *args, capacity: int | None = None, top_k: int | None = None,
          num_experts: int | None = None):
    """Route N patches to E experts of `capacity` slots each.

    Call as `route(scores, capacity, top_k=1)` or, as docs/design.md writes it,
    `route(scores, num_experts, capacity, top_k)` (num_experts must equal scores.shape[1]).

    scores: [N, E] router scores (int8 on device, float in training); compared exactly.
    Returns (dispatch int32 [E*C], combine int32 [k*N], counts int32 [E]):
      1. each patch's k best experts, ties -> lowest expert index first;
      2. slots are given in priority order, then patch order: for j in 0..k-1, n in 0..N-1,
         expert e = choice[n][j] takes patch n if it has fewer than C patches;
      3. dispatch[e*C + i] = the i-th patch of expert e, or N for an empty slot (gathers a zero
         row); combine[j*N + n] = the slot of patch n's j-th choice, or E*C if it was dropped;
      4. counts[e] = patches expert e processes.
    """
    if len(args) == 3:
        num_experts, capacity, top_k = args
    elif len(args) == 2:
        capacity, top_k = args
    elif len(args) == 1:
        (capacity,) = args
    elif args:
        raise TypeError("route(scores, capacity, top_k) or route(scores, num_experts, capacity, top_k)")
    top_k = 1 if top_k is None else int(top_k)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, E], got shape {scores.shape}")
    n_patches, n_experts = scores.shape
    if num_experts is not None and int(num_experts) != n_experts:
        raise ValueError(f"num_experts={num_experts} but scores have {n_experts} columns")
    if capacity is None or not 1 <= int(capacity) <= n_patches:
        raise ValueError(f"capacity must be in 1..N={n_patches}, got {capacity}")
    if top_k not in (1, 2) or top_k > n_experts:
        raise ValueError(f"top_k must be 1 or 2 and <= E, got {top_k}")
    capacity = int(capacity)

    choices = choose(scores, top_k)

    dispatch = np.full(n_experts * capacity, n_patches, dtype=np.int32)
    combine = np.full(top_k * n_patches, n_experts * capacity, dtype=np.int32)
    counts = np.zeros(n_experts, dtype=np.int32)
    for j in range(top_k):
        for n in range(n_patches):
            e = choices[n, j]
            if counts[e] < capacity:
                slot = e * capacity + counts[e]
                dispatch[slot] = n
                combine[j * n_patches + n] = slot
                counts[e] += 1
    return dispatch, combine, counts


def choose(scores, top_k: int = 1) -> np.ndarray:
    """Each patch's `top_k` best experts, best first, ties -> lowest expert index (step 1 of
    `route`, before any capacity): int64 [N, top_k]. `routevit prune` counts these."""
    scores = np.asarray(scores)
    # Stable descending order: argsort of the negated scores keeps equal scores in index order.
    # int8 scores are widened first so negating -128 cannot overflow.
    keys = -scores.astype(np.int64 if np.issubdtype(scores.dtype, np.integer) else np.float64)
    return np.argsort(keys, axis=1, kind="stable")[:, :top_k]
