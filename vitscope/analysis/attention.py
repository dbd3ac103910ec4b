"""Attention maps for a query token, and the per-head statistics behind the TUI's grid.

Conventions (also shown in the UI and written to exports):
- Query: a token index (0..N-1, prefix tokens first, then patches row-major). ``None`` means the CLS
  token, or for models without one (global average pooling) the mean over all patch queries — the
  average of the rows whose outputs are pooled into the prediction.
- A map is the query's attention row over patch tokens, reshaped to the (rows, cols) patch grid.
  Attention to prefix tokens (CLS, distillation, registers) is returned separately. With
  ``renormalise=True`` the patch part is divided by its sum, so maps are comparable even when
  register/artifact tokens take most of the mass.
- Heads: an int selects one head; "mean" / "max" fuse the heads' rows.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spec import TokenLayout

HeadSel = int | str  # an index, "mean" or "max"

# numpy, not torch: these views must draw before torch is imported (a cached trace reopens in well
# under a second, while importing torch alone takes seconds on GPU machines). Torch tensors are
# accepted and read without a copy.


def as_array(x: Any, dtype=np.float32) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass
class AttentionMap:
    grid: np.ndarray  # [rows, cols] attention of the query to each patch
    prefix: np.ndarray  # [P] attention of the query to each prefix token
    query: str  # description of the query, e.g. "CLS" or "patch (3, 4)" or "mean of patch queries"
    head: str
    layer: int
    renormalised: bool


def query_weights(layout: TokenLayout, query: int | None) -> np.ndarray:
    """A weight per query row: one-hot for a token, uniform over patches when there is no CLS."""
    w = np.zeros(layout.num_tokens, dtype=np.float32)
    if query is None:
        if layout.cls_index is not None:
            w[layout.cls_index] = 1.0
        else:
            w[layout.num_prefix:] = 1.0 / layout.num_patches
    else:
        if not 0 <= query < layout.num_tokens:
            raise IndexError(f"token {query} is out of range (0..{layout.num_tokens - 1})")
        w[query] = 1.0
    return w


def describe_query(layout: TokenLayout, query: int | None) -> str:
    if query is None:
        return "CLS" if layout.cls_index is not None else "mean of patch queries (no CLS token)"
    return layout.token_name(query)


def fuse_heads(attn_layer: Any, head: HeadSel) -> np.ndarray:
    """[H, N, N] -> [N, N] for one head or the mean / max / min over heads."""
    a = as_array(attn_layer)
    if isinstance(head, (int, np.integer)):
        return a[head]
    if head == "mean":
        return a.mean(0)
    if head == "max":
        return a.max(0)
    if head == "min":
        return a.min(0)
    raise ValueError(f"unknown head selection {head!r}")


def query_row(matrix: Any, layout: TokenLayout, query: int | None) -> np.ndarray:
    """The (weighted) query row of an [N, N] matrix."""
    m = as_array(matrix)
    if query is not None:
        query_weights(layout, query)  # range check
        return m[query]
    return query_weights(layout, None) @ m


def attention_map(attn: Any, layout: TokenLayout, layer: int, head: HeadSel = "mean",
                  query: int | None = None, renormalise: bool = False) -> AttentionMap:
    """The query's attention over the patch grid at one layer (``attn`` is the Trace's [L, H, N, N])."""
    a = as_array(attn[layer])
    row = query_row(fuse_heads(a, head), layout, query)
    p = layout.num_prefix
    patches = row[p:]
    if renormalise:
        patches = patches / max(float(patches.sum()), 1e-12)
    return AttentionMap(grid=patches.reshape(layout.grid), prefix=row[:p], query=describe_query(layout, query),
                        head=str(head), layer=layer, renormalised=renormalise)


@functools.lru_cache(maxsize=4)  # the same [P, P] for every layer of a trace: compute it once
def patch_distances(layout: TokenLayout) -> np.ndarray:
    """[P, P] Euclidean distance between patch centres, in patches (read-only: it is shared)."""
    rows, cols = layout.grid
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pos = np.stack([r.ravel(), c.ravel()], 1).astype(np.float64)
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)).astype(np.float32)
    d.flags.writeable = False
    return d


def head_statistics(attn: Any, layout: TokenLayout, query: int | None = None) -> dict[str, np.ndarray]:
    """Per layer x head statistics of the query row, each [L, H].

    - ``entropy``: Shannon entropy (nats) of the query's attention row over all tokens.
    - ``distance``: mean attention distance in patches. For a patch query, the expected distance from
      that patch to the patches it attends (patch mass renormalised). For the CLS (or no-CLS default)
      query, which has no position, the ViT paper's definition: the mean over all patch queries.
    - ``prefix``: attention mass the query puts on prefix tokens (CLS, distillation, registers).
    """
    a = as_array(attn)
    rows = np.einsum("n,lhnm->lhm", query_weights(layout, query), a)  # [L, H, N]
    return statistics_from_rows(rows, np.stack([query_distances(x, layout) for x in a]), layout, query)


def query_distances(attn_layer: Any, layout: TokenLayout) -> np.ndarray:
    """[H, P] for one layer [H, N, N]: each patch query's expected distance (in patches) to the patches
    it attends, patch mass renormalised. One head at a time: a [P, P] temporary, not [H, P, P]."""
    a = as_array(attn_layer)
    p = layout.num_prefix
    dist = patch_distances(layout)  # [P, P]
    out = np.empty((a.shape[0], layout.num_patches), np.float32)
    for h in range(a.shape[0]):
        pp = a[h, p:, p:]
        out[h] = (pp * dist).sum(-1) / np.maximum(pp.sum(-1), 1e-12)
    return out


def statistics_from_rows(rows: np.ndarray, distances: np.ndarray, layout: TokenLayout,
                         query: int | None = None) -> dict[str, np.ndarray]:
    """:func:`head_statistics` from the query's rows [L, H, N] and the per-query distances [L, H, P]
    (:func:`query_distances`): what a trace that does not hold every attention matrix keeps."""
    p = layout.num_prefix
    entropy = -(rows * np.log(np.maximum(rows, 1e-30))).sum(-1)
    prefix = rows[..., :p].sum(-1)
    if query is not None and query >= p:
        distance = distances[..., query - p]
    else:
        distance = distances.mean(-1)
    return {"entropy": entropy.astype(np.float32), "distance": distance.astype(np.float32),
            "prefix": prefix.astype(np.float32)}
