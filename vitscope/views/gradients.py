"""Class-dependent maps from one backward pass: Grad-CAM (ViT and CNN), Chefer relevance, gradient rollout."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .panes import ATTENTION, CLASSIFIER, Pane, PaneOutput, Scale

if TYPE_CHECKING:
    from .session import Session
    from .state import ViewState


def _target(session: Session, s: ViewState) -> int:
    t = session.target_of(s)
    assert t is not None  # the registry keeps class-dependent panes away from backbones
    return t


def gradcam(session: Session, s: ViewState) -> PaneOutput:
    t = _target(session, s)
    grid = session.gradcam(t)
    where = "last feature stage" if session.is_cnn else "last block norm1"
    return PaneOutput(grid, Scale.of(grid, "Grad-CAM, ReLU then min-max scaled"),
                      f"Grad-CAM ({where}) for class {session.class_name(t)}")


def chefer(session: Session, s: ViewState) -> PaneOutput:
    t = _target(session, s)
    grid = session.relevance("chefer", t, s.token)
    text: tuple[str, ...] = ()
    pos = session.layout.patch_position(s.token) if s.token is not None else None
    if pos is not None and grid.size > 1:
        # R starts as the identity: a patch query's own entry holds 1 + ..., which swamps every other
        # patch under min-max colouring. Shown at the others' maximum (the array in trace.npz is unchanged).
        grid = grid.copy()
        own = float(grid[pos])
        grid[pos] = float(np.delete(grid.ravel(), pos[0] * grid.shape[1] + pos[1]).max())
        text = (f"the query patch's own relevance ({own:.3g}, from R = I + ...) is drawn at the others' maximum",)
    return PaneOutput(grid, Scale.of(grid, "relevance (min..max of this map)"),
                      f"Chefer relevance of {session.describe_query(s.token)} for class {session.class_name(t)}", text)


def grad_rollout(session: Session, s: ViewState) -> PaneOutput:
    t = _target(session, s)
    grid = session.relevance("grad_rollout", t, s.token)
    return PaneOutput(grid, Scale.of(grid, "gradient rollout weight (min..max of this map)"),
                      f"gradient rollout of {session.describe_query(s.token)} for class {session.class_name(t)}")


PANES = (
    Pane("gradcam", "g", "Grad-CAM", "Grad-CAM for the target class (a ViT's last block norm1, a CNN's last "
         "stage): one backward pass", gradcam, frozenset({CLASSIFIER}), slow=True,
         slow_key=lambda se, s: ("gradcam", se.target_of(s)), export_name="gradcam.png"),
    Pane("chefer", "e", "relevance", "Chefer et al. 2021 gradient-weighted relevance of the query token for the "
         "target class", chefer, frozenset({ATTENTION, CLASSIFIER}), slow=True,
         slow_key=lambda se, s: ("attn_grads", se.target_of(s)), export_name="chefer.png"),
    Pane("grad_rollout", "G", "grad rollout", "rollout of gradient-weighted attention for the target class",
         grad_rollout, frozenset({ATTENTION, CLASSIFIER}), slow=True,
         slow_key=lambda se, s: ("attn_grads", se.target_of(s)), export_name="grad_rollout.png"),
)
