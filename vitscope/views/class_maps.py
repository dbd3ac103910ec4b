"""Per-block and per-head class maps (Vilas et al. 2023): for the query token (CLS by default), minus
the gradient of the target's loss on the projected attention update with respect to its attention
weights to the patches, every block x head plus the sum over heads."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .panes import ATTENTION, CLASSIFIER, Pane, PaneOutput, Scale

if TYPE_CHECKING:
    from .session import Session
    from .state import ViewState


def _query(session: Session, s: ViewState) -> int | None:
    return s.token if s.token is not None else session.layout.cls_index


def compute(session: Session, s: ViewState) -> PaneOutput:
    t, source = session.projection_target(s)
    q = _query(session, s)
    L, H = session.spec.num_layers, session.spec.num_heads
    if q is None:
        return PaneOutput(np.zeros(session.layout.grid), Scale(0.0, 0.0, "no values"),
                          "class maps need a query token: this model has no CLS (pick a patch token)")
    maps = session.class_maps(t, q)
    tiles = tuple(tuple(maps[layer, h] for h in range(H)) + (maps[layer].sum(0),) for layer in range(L))
    labels = (tuple(f"L{i}" for i in range(L)), tuple(f"h{j}" for j in range(H)) + ("sum",))
    total = maps.sum((0, 1))
    r, c = np.unravel_index(int(np.argmax(total)), total.shape)
    return PaneOutput(None, Scale(0.0, 1.0, "each tile min..max scaled; bright = attending more raises the class",
                                  fixed=True),
                      f"class maps of {session.class_name(t)} ({source}) for {session.describe_query(q)}: "
                      f"-d loss / d attention, {L} blocks x {H} heads + sum",
                      (f"sum over blocks and heads peaks at patch ({r}, {c})",), tiles=tiles, tile_labels=labels)


def _slow_key(session: Session, s: ViewState) -> tuple:
    return ("class_maps", session.projection_target(s)[0], _query(session, s))  # Session.class_maps' key


PANE = Pane("class_maps", "E", "class maps", "per-block, per-head class maps (Vilas et al. 2023): minus the gradient "
            "of the target's loss on the query's projected attention update w.r.t. its attention weights",
            compute, frozenset({ATTENTION, CLASSIFIER}), slow=True, slow_key=_slow_key,
            export_name="class_maps.png")
