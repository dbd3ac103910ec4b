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


class RolloutProduct:
    """Rollout as a running product, one layer at a time: ``add`` each layer's [H, N, N] attention in
    order (from the start layer) and ``matrix`` is A_last ... A_start. A trace of a big-token model
    uses it inside the capture hooks, so the attention of every layer never has to be held at once."""

    def __init__(self, head_fusion: str = "mean", discard: float = 0.0) -> None:
        if not 0.0 <= discard < 1.0:
            raise ValueError(f"discard must be in [0, 1), got {discard}")
        if head_fusion not in FUSIONS:
            raise ValueError(f"unknown head fusion {head_fusion!r} (use {', '.join(FUSIONS)})")
        self.head_fusion, self.discard = head_fusion, discard
        self.matrix: np.ndarray | None = None

    def add(self, attn_layer: Any) -> None:
        a = fuse(as_array(attn_layer), self.head_fusion)  # [N, N]
        n = a.shape[-1]
        if self.discard > 0:
            flat = a.reshape(-1).copy()
            k = int(flat.shape[0] * self.discard)
            if k:
                flat[np.argpartition(flat, k - 1)[:k]] = 0.0  # the k lowest of the layer
            a = flat.reshape(a.shape)
        a = 0.5 * a + 0.5 * np.eye(n, dtype=a.dtype)
        a = a / a.sum(-1, keepdims=True)
        self.matrix = a if self.matrix is None else a @ self.matrix


def attention_rollout(attn: Any, head_fusion: str = "mean", discard: float = 0.0,
                      start_layer: int = 0, end_layer: int | None = None) -> np.ndarray:
    """Rollout matrix [N, N] from attention [L, H, N, N] over layers start_layer..end_layer (inclusive)."""
    product = RolloutProduct(head_fusion, discard)
    L = attn.shape[0]
    end = L - 1 if end_layer is None else end_layer
    if not 0 <= start_layer <= end < L:
        raise ValueError(f"layers {start_layer}..{end} are out of range for {L} layers")
    for layer in range(start_layer, end + 1):
        product.add(attn[layer])
    return product.matrix


def rollout_map(rollout: Any, layout: TokenLayout, query: int | None = None) -> np.ndarray:
    """The query's rollout row over patch tokens, as the [rows, cols] grid."""
    return query_row(rollout, layout, query)[layout.num_prefix:].reshape(layout.grid)


__all__ = ["RolloutProduct", "attention_rollout", "rollout_map", "describe_query", "FUSIONS"]
