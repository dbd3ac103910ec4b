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
    pane: str = "attention"  # attention | rollout | overview | gradcam | chefer | grad_rollout | projection
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

    def gradient_maps(self, token: int | None) -> dict[str, np.ndarray]:
        """Grad-CAM, Chefer relevance and gradient rollout for the target class (one backward each)."""
        from .analysis.gradients import (attention_gradients, chefer_relevance, gradcam, gradient_rollout,
                                         relevance_map)

        t = self.target_class

        def compute():
            m = self.loaded.model
            attn, grad = self._cached(("attn_grads", t), lambda: attention_gradients(m, self.trace.input, t))
            return {"gradcam": gradcam(m, self.trace.input, t, self.layout).numpy(),
                    "chefer": relevance_map(chefer_relevance(attn, grad), self.layout, token).numpy(),
                    "grad_rollout": relevance_map(gradient_rollout(attn, grad), self.layout, token).numpy()}

        return self._cached(("gradient_maps", t, token), compute)

    def projections(self):
        """Class-embedding projections (paper convention) for the target class."""
        from .analysis.projection import project_trace

        t = self.target_class
        return self._cached(("projections", t), lambda: project_trace(self.trace, self.loaded.model, t))

    def projection_top(self, layer: int, token: int | None, k: int = 5) -> list[tuple[str, float]]:
        """Top classes of the query token's block output at ``layer`` (CLS, or the mean of patch rows)."""
        P = self.projections()
        tok = token if token is not None else (self.layout.cls_index if self.layout.cls_index is not None else None)
        if tok is None:  # no CLS: average the patch tokens' projected probabilities
            probs: dict[int, float] = {}
            idx, pr = P.topk_idx[layer, self.layout.num_prefix:], P.topk_prob[layer, self.layout.num_prefix:]
            for i, p in zip(idx.flatten().tolist(), pr.flatten().tolist()):
                probs[i] = probs.get(i, 0.0) + p / idx.shape[0]
            top = sorted(probs.items(), key=lambda kv: -kv[1])[:k]
        else:
            top = list(zip(P.topk_idx[layer, tok].tolist(), P.topk_prob[layer, tok].tolist()))[:k]
        return [(self.spec.classes[i], float(p)) for i, p in top]

    def needs_gradients(self, s: ViewState) -> bool:
        """Whether the view needs a backward pass that is not cached yet (the TUI runs it in a worker)."""
        if s.pane in ("gradcam", "chefer", "grad_rollout"):
            return ("gradient_maps", self.target_class, s.token) not in self._cache
        if s.pane == "projection":
            return ("projections", self.target_class) not in self._cache
        return False

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
        if s.pane in ("gradcam", "chefer", "grad_rollout"):
            return self.gradient_maps(s.token)[s.pane]
        if s.pane == "projection":  # r = 1 - rank/C of the target for each patch token at this layer
            return self.projections().r[s.layer, self.layout.num_prefix:].reshape(self.layout.grid).numpy()
        return self.attention_grid(s.layer, s.head, s.token)

    def picture(self, s: ViewState) -> np.ndarray:
        """The main pane's picture (uint8 HxWx3) for a view state; cached."""
        def compute():
            if s.pane == "overview":
                return np.asarray(self.overview(s))
            grid = self.grid_for(s)
            absolute = s.pane == "projection"  # r is already in [0, 1]: no min-max stretch
            if s.view == "image":
                pic = self.image
            elif s.view == "map":
                pic = render.heatmap(grid, *self.image.shape[:2], cmap=s.cmap, scaled=absolute)
            else:
                pic = render.overlay(self.image, grid, s.alpha, s.cmap, scaled=absolute)
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
        target = self.spec.classes[self.target_class]
        if s.pane == "gradcam":
            return f"Grad-CAM (last block norm1) for class {target}"
        if s.pane == "chefer":
            return f"Chefer relevance of {q} for class {target}"
        if s.pane == "grad_rollout":
            return f"gradient rollout of {q} for class {target}"
        if s.pane == "projection":
            return f"layer {s.layer}: identifiability r = 1 - rank/C of {target} per patch (0..1, paper convention)"
        if s.pane == "overview":
            return (f"overview: rows = {self.trace.num_layers} layers, columns = {self.trace.num_heads} heads + mean, "
                    f"query {q}")
        head = "mean of heads" if s.head == "mean" else f"head {s.head}"
        return f"layer {s.layer}, {head}, query {q}"

    def save_view(self, s: ViewState, path: str | Path) -> Path:
        pic = self.picture(s)
        img = render.with_caption(pic, self.title(s)) if s.pane != "overview" else self.overview(s, labels=True)
        return render.save_png(img, path)
