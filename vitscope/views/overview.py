"""All layers x heads (+ the mean) as small multiples for the query token: the classic figure."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .panes import ATTENTION, Pane, PaneOutput, Scale

if TYPE_CHECKING:
    from .session import Session
    from .state import ViewState


def compute(session: Session, s: ViewState) -> PaneOutput:
    L, H = session.spec.num_layers, session.spec.num_heads
    tiles = tuple(tuple(session.attention_grid(layer, h, s.token) for h in [*range(H), "mean"]) for layer in range(L))
    labels = (tuple(f"L{i}" for i in range(L)), tuple(f"h{j}" for j in range(H)) + ("mean",))
    return PaneOutput(None, Scale(0.0, 1.0, "each tile min..max scaled", fixed=True),
                      f"attention of {session.describe_query(s.token)}: {L} layers x {H} heads + mean",
                      tiles=tiles, tile_labels=labels)


PANE = Pane("overview", "o", "overview", "every layer x head (and the mean) as small multiples, labelled; "
            "the selection is boxed and the view pages to follow it", compute, frozenset({ATTENTION}),
            export_name="heads.png")
