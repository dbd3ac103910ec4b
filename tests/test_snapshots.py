"""SVG snapshots of each screen and pane at the two sizes people use over SSH (80x24, 160x48), per
feature (as posting does). Reviewed by eye when updated: pytest tests/test_snapshots.py
--snapshot-update, then look at the SVGs as PNG (rsvg-convert from Debian's librsvg2-bin)."""
from __future__ import annotations

import pytest

import vitscope
from vitscope.views import Session

from tui_helpers import IMAGE, MODEL, make_app, settle


@pytest.fixture(scope="module")
def session():
    return Session.open(vitscope.load(MODEL), IMAGE)


FEATURES = {
    "main": ["j", "h"],
    "overview": ["o"],
    "rollout_token": ["t", "l", "j", "enter", "r", "f"],
    "help": ["question_mark"],
    "raw_map_values": ["v", "m", "number_sign"],
    "projection": ["p", "j", "j"],
    "gradcam": ["g"],
}


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("feature", list(FEATURES))
def test_screen_snapshot(snap_compare, session, feature, size):
    async def run_before(pilot):
        await settle(pilot)
        for k in FEATURES[feature]:
            await pilot.press(k)
            await settle(pilot)

    assert snap_compare(make_app(session), run_before=run_before, terminal_size=size)
