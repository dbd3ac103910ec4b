"""The frozen view state: what the screen (or an export) shows. It is the view model and, with the
session, the cache key of every array and picture."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..render import DEFAULT_CMAP

VIEWS = ("overlay", "map", "image")
FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class ViewState:
    pane: str = "attention"  # a name in the pane registry (views.panes.PANES)
    layer: int = 0
    head: int | str = "mean"  # a head index or "mean"
    token: int | None = None  # query token; None = CLS (or the mean of patch queries without CLS)
    target: int | None = None  # target class; None = the prediction
    fusion: str = "mean"  # rollout: head fusion
    discard: float = 0.0  # rollout: fraction of lowest weights dropped
    start_layer: int = 0  # rollout: first layer
    view: str = "overlay"  # overlay | map | image
    cmap: str = DEFAULT_CMAP
    alpha: float = 0.6

    def with_(self, **changes) -> "ViewState":
        return replace(self, **changes)

    def analysis_key(self) -> "ViewState":
        """The state without its display-only fields: what a pane's arrays depend on."""
        return replace(self, view="overlay", cmap=DEFAULT_CMAP, alpha=0.6)
