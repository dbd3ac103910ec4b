"""An Inspection: one model, one image, and cached arrays/images for every view the inspector shows.

The TUI holds view state (layer, head, token, pane) and asks this object for pictures; everything
is computed once and cached by (what, layer, head, token, settings), so moving around the grid never
re-runs the model. No Textual here: scripts and the export use the same object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import render

VIEWS = ("overlay", "map", "image")


@dataclass(frozen=True)
class ViewState:
    layer: int = 0
    head: int | str = "mean"  # a head index or "mean"
    token: int | None = None  # None = CLS (or mean of patch queries without CLS)
    pane: str = "attention"  # attention | rollout | overview
    view: str = "overlay"  # overlay | map | image
    cmap: str = "inferno"
    alpha: float = 0.6
    cursor: tuple[int, int] | None = None  # patch outlined in token mode
    fusion: str = "mean"
    discard: float = 0.0


@dataclass
class Inspection:
    loaded: Any
    trace: Any
    image_path: str = ""
    target: int | None = None
    _cache: dict[tuple, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, loaded, image_path: str | Path) -> "Inspection":
        from .data.images import load_image
        from .tracing import trace

        prep = load_image(image_path, loaded.spec.data_config)
        return cls(loaded, trace(loaded, prep), str(image_path))

    # -- numbers ---------------------------------------------------------------------------------
    @property
    def spec(self):
        return self.loaded.spec

    @property
    def layout(self):
        return self.trace.layout

    def _cached(self, key: tuple, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def top_k(self, k: int = 5) -> list[tuple[int, str, float]]:
        def compute():
            probs = self.trace.probs
            vals, idx = probs.topk(min(k, probs.numel()))
            return [(int(i), self.spec.classes[int(i)], float(v)) for v, i in zip(vals, idx)]

        return self._cached(("topk", k), compute)

    @property
    def prediction(self) -> int:
        return self.trace.prediction

    @property
    def target_class(self) -> int:
        return self.prediction if self.target is None else self.target

    def head_stats(self, token: int | None) -> dict[str, np.ndarray]:
        from .analysis.attention import head_statistics

        return self._cached(("stats", token), lambda: {k: v.numpy() for k, v in
                                                       head_statistics(self.trace.attn, self.layout, token).items()})

    def head_importance(self) -> np.ndarray:
        """[L, H] drop of the target logit when each head is zero-ablated (positive = the head helps)."""
        from .analysis.ablation import head_ablation

        t = self.target_class
        return self._cached(("importance", t), lambda: -head_ablation(self.loaded.model, self.trace, t)
                            .logit_delta.numpy())

    def has_cached(self, *key) -> bool:
        return tuple(key) in self._cache

    def attention_grid(self, layer: int, head: int | str, token: int | None) -> np.ndarray:
        from .analysis.attention import attention_map

        return self._cached(("attn", layer, head, token),
                            lambda: attention_map(self.trace.attn, self.layout, layer, head, token).grid.numpy())

    def prefix_attention(self, layer: int, head: int | str, token: int | None) -> np.ndarray:
        from .analysis.attention import attention_map

        return self._cached(("prefix", layer, head, token),
                            lambda: attention_map(self.trace.attn, self.layout, layer, head, token).prefix.numpy())

    def rollout_grid(self, token: int | None, fusion: str = "mean", discard: float = 0.0) -> np.ndarray:
        from .analysis.rollout import attention_rollout, rollout_map

        R = self._cached(("rollout_matrix", fusion, discard), lambda: attention_rollout(self.trace.attn, fusion, discard))
        return self._cached(("rollout", token, fusion, discard), lambda: rollout_map(R, self.layout, token).numpy())

    def describe_query(self, token: int | None) -> str:
        from .analysis.attention import describe_query

        return describe_query(self.layout, token)

    # -- pictures --------------------------------------------------------------------------------
    @property
    def image(self) -> np.ndarray:
        img = self.trace.image
        return img if img is not None else np.zeros((*self.spec.img_size, 3), np.uint8)

    def grid_for(self, s: ViewState) -> np.ndarray:
        if s.pane == "rollout":
            return self.rollout_grid(s.token, s.fusion, s.discard)
        return self.attention_grid(s.layer, s.head, s.token)

    def picture(self, s: ViewState) -> np.ndarray:
        """The main pane's picture (uint8 HxWx3) for a view state; cached."""
        def compute():
            if s.pane == "overview":
                return np.asarray(self.overview(s))
            grid = self.grid_for(s)
            if s.view == "image":
                pic = self.image
            elif s.view == "map":
                pic = render.heatmap(grid, *self.image.shape[:2], cmap=s.cmap)
            else:
                pic = render.overlay(self.image, grid, s.alpha, s.cmap)
            if s.cursor is not None:
                pic = render.outline_patch(pic, self.layout.grid, *s.cursor)
            return pic

        return self._cached(("picture", s), compute)

    def overview(self, s: ViewState, labels: bool = False):
        """All layers x heads (+ mean) as small multiples for the query token (the classic figure):
        rows = layers, columns = heads then the mean. Labels are drawn for saved files only (text
        drawn into pixels is unreadable at terminal resolution; the TUI's grid names the cells)."""
        L, H = self.trace.num_layers, self.trace.num_heads
        tiles = [[render.overlay(self.image, self.attention_grid(layer, h, s.token), s.alpha, s.cmap)
                  for h in [*range(H), "mean"]] for layer in range(L)]
        if labels:
            return render.small_multiples(tiles, [f"L{i}" for i in range(L)],
                                          [f"h{j}" for j in range(H)] + ["mean"],
                                          title=f"attention of {self.describe_query(s.token)}")
        return render.small_multiples(tiles, min_tile=56, pad=10)

    def title(self, s: ViewState) -> str:
        q = self.describe_query(s.token)
        if s.pane == "rollout":
            return f"rollout ({s.fusion}, discard {s.discard:g}) of {q}"
        if s.pane == "overview":
            return (f"overview: rows = {self.trace.num_layers} layers, columns = {self.trace.num_heads} heads + mean, "
                    f"query {q}")
        head = "mean of heads" if s.head == "mean" else f"head {s.head}"
        return f"layer {s.layer}, {head}, query {q}"

    def save_view(self, s: ViewState, path: str | Path) -> Path:
        pic = self.picture(s)
        img = render.with_caption(pic, self.title(s)) if s.pane != "overview" else self.overview(s, labels=True)
        return render.save_png(img, path)
