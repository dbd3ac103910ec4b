"""The pane registry: every view the inspector and ``vitscope export`` show.

A pane says its name, key, title, what it computes from (session, state) — a map on the patch grid
with its scale and legend, plus text — what it needs from a model, and whether it is slow (a
backward pass or many forwards: the TUI computes it in a worker, with progress). The TUI's bindings,
help and command palette are generated from this registry, and ``vitscope export`` loops over it,
so a saved PNG is what the screen showed. Adding a pane is one new module plus one entry in
:data:`PANES` (at the bottom of this file).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .session import Session
    from .state import ViewState

# what a pane may need from a model; Session.capabilities says what a model offers
ATTENTION = "attention"  # a ViT's attention maps and residual stream (a CNN has none)
CLASSIFIER = "classifier"  # a classification head (a headless backbone has none)
FINITE = "finite"  # the class scores of this image are finite (NaN weights or an overflow make them not)
CNN = "cnn"
MODEL = "model"  # the torch model itself (absent while a cached trace is shown and the model loads)


@dataclass(frozen=True)
class Scale:
    """How map values become colours: [lo, hi] of the colour bar, and what the values mean."""

    lo: float
    hi: float
    label: str
    fixed: bool = False  # a fixed range (e.g. 0..1) rather than this map's min..max

    @classmethod
    def of(cls, grid: np.ndarray, label: str) -> "Scale":
        """This map's min..max (finite values only)."""
        g = np.asarray(grid, dtype=np.float64)
        finite = g[np.isfinite(g)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        return cls(lo, hi, label)


@dataclass(frozen=True)
class Table:
    """Rows of text for a pane's side table (e.g. the class projections per layer)."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    highlight: int | None = None  # the row of the selected layer
    caption: str = ""


@dataclass(frozen=True)
class PaneOutput:
    grid: np.ndarray | None  # [rows, cols] on the patch grid (None: the pane draws tiles)
    scale: Scale
    title: str
    text: tuple[str, ...] = ()  # short lines for the status line / the saved figure
    table: Table | None = None
    tiles: tuple[tuple[np.ndarray, ...], ...] | None = None  # small multiples: rows x cols of grids
    tile_labels: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (row labels, column labels)

    def value_at(self, row: int, col: int) -> float | None:
        if self.grid is None:
            return None
        return float(self.grid[row, col])


@dataclass(frozen=True)
class PaneKey:
    """A key that changes a setting while a pane is shown (e.g. rollout's head fusion)."""

    key: str
    action: str  # an action of the inspector screen, e.g. "cycle_fusion"
    description: str


@dataclass(frozen=True)
class Pane:
    name: str
    key: str | None  # Textual key name that opens/closes it (None: the home pane)
    title: str  # short, for the footer and the palette
    help: str  # one sentence: what it shows
    compute: Callable[["Session", "ViewState"], PaneOutput]
    requires: frozenset[str] = frozenset()
    slow: bool = False
    slow_key: Callable[["Session", "ViewState"], tuple] | None = None  # cache key of the slow part
    export_name: str | None = None  # file written by `vitscope export` (None: not exported as one PNG)
    keys: tuple[PaneKey, ...] = field(default_factory=tuple)
    keys_hint: str = ""  # the pane's own keys in a few words, for the screens where they work

    @property
    def help_with_keys(self) -> str:
        return f"{self.help} ({self.keys_hint})" if self.keys_hint else self.help

    def unavailable(self, session: "Session", loading_ok: bool = False) -> str | None:
        """Why this pane cannot show this model (None when it can). ``loading_ok``: a model that is still
        loading counts as there (the pane waits for it)."""
        missing = self.requires - session.capabilities
        if self.slow and MODEL not in session.capabilities and not loading_ok:
            missing = missing | {MODEL}
        if not missing and CLASSIFIER in self.requires and FINITE not in session.capabilities:
            return (f"the {self.title} pane needs class scores; {session.name}'s outputs on this image are NaN or infinite "
                    "(non-finite weights, or an overflow)")
        if not missing:
            return None
        if CLASSIFIER in missing:
            return (f"the {self.title} pane needs class scores; {session.name} is a backbone without a classifier head "
                    "(its outputs are features)")
        if MODEL in missing and len(missing) == 1:
            return f"the {self.title} pane needs the model, which is still loading (the cached trace is shown meanwhile)"
        if ATTENTION in missing:
            return f"the {self.title} pane needs attention maps; {session.name} is a CNN (Grad-CAM is its map)"
        return f"the {self.title} pane is not available for {session.name}"


def _registry() -> dict[str, Pane]:
    from . import attention, class_maps, gradients, norms, overview, projection, rollout

    panes = [attention.PANE, overview.PANE, rollout.PANE, *gradients.PANES, projection.PANE, class_maps.PANE, norms.PANE]
    return {p.name: p for p in panes}


PANES: dict[str, Pane] = _registry()
