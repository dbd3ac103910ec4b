"""Shared helpers for the Pilot tests of the screens."""
from __future__ import annotations

import numpy as np

from vitscope.tui.app import InspectorApp, Options
from vitscope.views import Session

from conftest import ROOT

MODEL = ROOT / "samples" / "fashion-vit-p7.safetensors"
IMAGE = ROOT / "samples" / "fashion_0000_ankle-boot.png"
CNN = ROOT / "samples" / "fashion-cnn.safetensors"
SANDAL = ROOT / "samples" / "fashion_0021_sandal_pred-sneaker.png"


def fresh(session: Session) -> Session:
    """A new Session (empty cache) over the same model and trace."""
    return Session(session.loaded, session.trace, session._shown, session.input, session.image_path,
                   session._logits)


def make_app(session: Session, model=MODEL, image=IMAGE, **opts) -> InspectorApp:
    return InspectorApp(Options(model=str(model), image=str(image), **opts), session=fresh(session))


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def settle(pilot, timeout: float = 60.0) -> None:
    """Wait until no worker runs (slow panes compute in workers) and the screen has caught up."""
    t = 0.0
    await pilot.pause()
    while any(w.is_running for w in pilot.app.workers):
        await pilot.pause(0.05)
        t += 0.05
        assert t < timeout, "timed out waiting for workers"
    await pilot.pause()


async def wait_for(pilot, cond, timeout: float = 60.0) -> None:
    t = 0.0
    while not cond():
        await pilot.pause(0.05)
        t += 0.05
        assert t < timeout, "timed out waiting for the app"


def shown_picture(app) -> np.ndarray:
    from vitscope.tui.widgets import HalfCellImage

    return app.screen.query_one(HalfCellImage)._image
