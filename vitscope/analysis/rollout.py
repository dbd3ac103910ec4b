"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Per layer: fuse the heads (mean, max or min), optionally zero the lowest ``discard`` fraction of the
fused weights, add the residual as 0.5*A + 0.5*I, re-normalise each row to sum to 1, then multiply
from ``start_layer`` to the last layer: R = A_L ... A_start. The query's row of R over patch tokens
is the map.

Where this deliberately differs from jacobgil's vit-explain: (1) rows are normalised —
vit-explain's ``a / a.sum(dim=-1)`` broadcasts the row sums over columns, i.e. divides column j by
row j's sum (the two agree only while rows already sum to one: mean fusion, no discard); (2) the discard is applied over the whole fused matrix with no special case, whereas
vit-explain exempts only flat index 0 (the CLS->CLS entry); (3) models without CLS read the mean of
the patch query rows instead of row 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..spec import TokenLayout
from .attention import as_array, describe_query, query_row

FUSIONS = ("mean", "max", "min")


def fuse(attn_layers: np.ndarray, head_fusion: str) -> np.ndarray:
    if head_fusion == "mean":
        return attn_layers.mean(-3)
    if head_fusion == "max":
        return attn_layers.max(-3)
    if head_fusion == "min":
        return attn_layers.min(-3)
    raise ValueError(f"unknown head fusion {head_fusion!r} (use {', '.join(FUSIONS)})")


def attention_rollout(attn: Any, head_fusion: str = "mean", discard: float = 0.0,
                      start_layer: int = 0, end_layer: int | None = None) -> np.ndarray:
    """Rollout matrix [N, N] from attention [L, H, N, N] over layers start_layer..end_layer (inclusive)."""
    if not 0.0 <= discard < 1.0:
        raise ValueError(f"discard must be in [0, 1), got {discard}")
    L = attn.shape[0]
    end = L - 1 if end_layer is None else end_layer
    if not 0 <= start_layer <= end < L:
        raise ValueError(f"layers {start_layer}..{end} are out of range for {L} layers")
    a = fuse(as_array(attn[start_layer:end + 1]), head_fusion)  # [l, N, N]
    n = a.shape[-1]
    if discard > 0:
        flat = a.reshape(a.shape[0], -1).copy()
        k = int(flat.shape[1] * discard)
        if k:
            idx = np.argpartition(flat, k - 1, axis=1)[:, :k]  # the k lowest of each layer
            np.put_along_axis(flat, idx, 0.0, axis=1)
        a = flat.reshape(a.shape)
    a = 0.5 * a + 0.5 * np.eye(n, dtype=a.dtype)
    a = a / a.sum(-1, keepdims=True)
    result = a[0]
    for layer in a[1:]:
        result = layer @ result
    return result


def rollout_map(rollout: Any, layout: TokenLayout, query: int | None = None) -> np.ndarray:
    """The query's rollout row over patch tokens, as the [rows, cols] grid."""
    return query_row(rollout, layout, query)[layout.num_prefix:].reshape(layout.grid)


__all__ = ["attention_rollout", "rollout_map", "describe_query", "FUSIONS"]
