"""SVG snapshots of the main screens (half-cell renderer, fixed size), reviewed by eye when updated:
pytest tests/test_snapshots.py --snapshot-update, then look at the PNGs of the SVGs."""
from __future__ import annotations

import pytest

import vitscope
from vitscope.inspection import Inspection
from vitscope.tui.app import InspectorApp, Options

from conftest import ROOT

MODEL = ROOT / "samples" / "fashion-vit-p7.safetensors"
IMAGE = ROOT / "samples" / "fashion_0000_ankle-boot.png"


@pytest.fixture(scope="module")
def inspection():
    return Inspection.open(vitscope.load(MODEL), IMAGE)


def app_for(inspection) -> InspectorApp:
    return InspectorApp(Options(model=str(MODEL), image=str(IMAGE), truecolor_missing=False),
                        inspection=Inspection(inspection.loaded, inspection.trace, inspection.image_path))


@pytest.mark.parametrize("name,keys", [
    ("main", ["j", "l"]),
    ("overview", ["o"]),
    ("rollout_token", ["t", "l", "j", "enter", "r"]),
    ("help", ["question_mark"]),
    ("raw_map_viridis", ["v", "m", "m", "m", "m", "m", "m"]),
    ("projection_layer2", ["p", "j", "j"]),
    ("gradcam", ["g"]),
])
def test_screen_snapshot(snap_compare, inspection, name, keys):
    async def settle(pilot):  # gradient and projection panes compute in a worker
        for k in keys:
            await pilot.press(k)
            for _ in range(100):
                await pilot.pause(0.02)
                if not pilot.app.workers._workers:
                    break

    assert snap_compare(app_for(inspection), run_before=settle, terminal_size=(120, 36))
