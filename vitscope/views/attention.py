"""The home pane: one head's (or the mean of heads') attention of the query token over the patches."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .panes import ATTENTION, Pane, PaneOutput, Scale

if TYPE_CHECKING:
    from .session import Session
    from .state import ViewState


def compute(session: Session, s: ViewState) -> PaneOutput:
    grid = session.attention_grid(s.layer, s.head, s.token)
    head = "mean of heads" if s.head == "mean" else f"head {s.head}"
    text: tuple[str, ...] = ()
    prefix = session.prefix_attention(s.layer, s.head, s.token)
    if len(prefix):
        names = session.layout.prefix_names
        text = ("to prefix tokens: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, prefix)),)
    return PaneOutput(grid, Scale.of(grid, "attention weight (min..max of this map)"),
                      f"layer {s.layer}, {head}, query {session.describe_query(s.token)}", text)


PANE = Pane("attention", None, "attention", "the selected layer and head's attention of the query token over "
            "the patches (h j k l move; a toggles the mean over heads)", compute, frozenset({ATTENTION}))
