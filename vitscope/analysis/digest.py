"""What the views need from every layer's attention, gathered one layer at a time.

A big-token model cannot hold its attention: ViT-L/14 at 518 px has 24 x 16 x 1,370 x 1,370
probabilities, 2.9 GB in float32. The views need much less: the default query's row of every layer
and head (the grid, its statistics, the attention and overview panes), each patch query's mean
attention distance (the distance statistic for any query), and the rollout with the default settings
(a running product: one [N, N] matrix). A :class:`DigestBuilder` takes each layer's [H, N, N] as the
forward produces it (the capture hooks call it) and keeps only that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spec import TokenLayout
from .attention import as_array, query_distances, query_weights, statistics_from_rows
from .rollout import RolloutProduct

DEFAULT_ROLLOUT = ("mean", 0.0, 0)  # head fusion, discard, start layer: what the digest's rollout uses


@dataclass
class AttentionDigest:
    """``rows`` [L, H, N]: the default query's attention row (CLS, or the mean of the patch queries for a
    model without CLS); ``distances`` [L, H + 1, P]: each patch query's mean attention distance for every
    head and for the mean of heads (last); ``rollout`` [N, N]: the rollout matrix with
    :data:`DEFAULT_ROLLOUT`."""

    rows: np.ndarray
    distances: np.ndarray
    rollout: np.ndarray

    @property
    def num_layers(self) -> int:
        return self.rows.shape[0]

    @property
    def num_heads(self) -> int:
        return self.rows.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.rows.shape[-1]

    def statistics(self, rows: np.ndarray, layout: TokenLayout, query: int | None) -> dict[str, np.ndarray]:
        """Per layer x (heads + mean of heads) statistics of the query whose rows [L, H, N] are given."""
        with_mean = np.concatenate([rows, rows.mean(1, keepdims=True)], 1)  # the mean map's row is the rows' mean
        return statistics_from_rows(with_mean, self.distances, layout, query)


class DigestBuilder:
    """Feed :meth:`add` every layer's attention [H, N, N] in order; :meth:`result` is the digest."""

    def __init__(self, layout: TokenLayout, num_layers: int) -> None:
        self.layout, self.num_layers = layout, num_layers
        self._w = query_weights(layout, None)
        self._rows: list[np.ndarray] = []
        self._distances: list[np.ndarray] = []
        self._rollout = RolloutProduct(*DEFAULT_ROLLOUT[:2])

    def add(self, attn_layer: Any) -> None:
        a = as_array(attn_layer)  # [H, N, N] float32 (a view when it already is)
        self._rows.append(np.einsum("n,hnm->hm", self._w, a))
        d = query_distances(a, self.layout)
        d_mean = query_distances(a.mean(0, keepdims=True), self.layout)
        self._distances.append(np.concatenate([d, d_mean]))
        self._rollout.add(a)

    def result(self) -> AttentionDigest:
        if len(self._rows) != self.num_layers:
            raise RuntimeError(f"digest saw {len(self._rows)} of {self.num_layers} layers")
        return AttentionDigest(rows=np.stack(self._rows), distances=np.stack(self._distances),
                               rollout=self._rollout.matrix)


def digest_of(attn: Any, layout: TokenLayout) -> AttentionDigest:
    """The digest of a full attention tensor [L, H, N, N] (what the hooks build layer by layer)."""
    b = DigestBuilder(layout, attn.shape[0])
    for layer in range(attn.shape[0]):
        b.add(attn[layer])
    return b.result()
