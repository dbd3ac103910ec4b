"""Attention rollout (Abnar & Zuidema 2020) of the query token, with its settings editable."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .panes import ATTENTION, Pane, PaneKey, PaneOutput, Scale

if TYPE_CHECKING:
    from .session import Session
    from .state import ViewState


def compute(session: Session, s: ViewState) -> PaneOutput:
    grid = session.rollout_grid(s.token, s.fusion, s.discard, s.start_layer)
    return PaneOutput(grid, Scale.of(grid, "rollout weight (min..max of this map)"),
                      f"rollout ({s.fusion} of heads, discard {s.discard:g}, from layer {s.start_layer}) of "
                      f"{session.describe_query(s.token)}",
                      ("keys: f head fusion, d/D discard more/less, </> start layer  ·  0.5*A + 0.5*I per layer, "
                       "rows renormalised, multiplied from the start layer",))


PANE = Pane("rollout", "r", "rollout", "attention rollout of the query token: heads fused, residual added, "
            "layers multiplied", compute, frozenset({ATTENTION}),
            export_name="rollout.png", keys_hint="f fusion, d/D discard, </> start layer",
            keys=(PaneKey("f", "cycle_fusion", "rollout head fusion: mean / max / min"),
                  PaneKey("d", "discard(0.1)", "rollout: discard more of the lowest weights"),
                  PaneKey("D", "discard(-0.1)", "rollout: discard less"),
                  PaneKey("greater_than_sign", "start_layer(1)", "rollout: start one layer later"),
                  PaneKey("less_than_sign", "start_layer(-1)", "rollout: start one layer earlier")))
