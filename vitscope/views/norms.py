"""Token norms: the L2 norm of each patch token's block output. Works for headless backbones (DINO-style),
where high-norm artefact tokens (Darcet et al. 2024, "Vision Transformers Need Registers") stand out."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .panes import ATTENTION, Pane, PaneOutput, Scale

if TYPE_CHECKING:
    from .session import Session
    from .state import ViewState


def compute(session: Session, s: ViewState) -> PaneOutput:
    grid = session.token_norms(s.layer)
    return PaneOutput(grid, Scale.of(grid, "||x||2 of the block output"),
                      f"layer {s.layer}: L2 norm of each patch token's block output")


PANE = Pane("norms", "N", "token norms", "the L2 norm of each patch token after the selected layer "
            "(artefact tokens stand out)", compute, frozenset({ATTENTION}), export_name="norms.png")
