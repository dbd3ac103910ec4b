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


BROWSER_FEATURES = {
    "browser": [],
    "browser_confusion": ["c", "j", "j", "l"],
    "browser_sorted_filtered": ["w", "6"],
    "browser_to_inspector": ["m", "enter"],
}


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("feature", list(BROWSER_FEATURES))
def test_browser_snapshot(snap_compare, feature, size):
    """The browser on the 300 MNIST test images of tests/data (a fresh sweep every time: a cached one says so)."""
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.browser import BrowserOptions

    from conftest import MNIST_DIR, ROOT

    model = str(ROOT / "samples" / "digits-vit.safetensors")
    app = InspectorApp(Options(model=model, image="", browse=BrowserOptions(
        model=model, dataset="mnist", data_dir=str(MNIST_DIR), use_cache=False)))

    async def run_before(pilot):
        from tui_helpers import wait_for

        await wait_for(pilot, lambda: getattr(pilot.app.screen, "final", False))
        await settle(pilot)
        for k in BROWSER_FEATURES[feature]:
            await pilot.press(k)
            await settle(pilot)
        scr = pilot.app.screen
        if hasattr(scr, "final") and scr.query_one("#browse-side").display:  # the map follows after a short delay
            await wait_for(pilot, lambda: "for the predicted class" in str(scr.query_one("#thumb-title").render()))
        await settle(pilot)

    assert snap_compare(app, run_before=run_before, terminal_size=size)


TRAINING_FEATURES = {
    "training_finished": [],
    "training_scrubbed_head": ["home", "right", "h", "j"],
    "training_help": ["question_mark"],
}


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("feature", [*TRAINING_FEATURES, "training_error"])
def test_training_snapshot(snap_compare, feature, size, tmp_path, monkeypatch):
    """The training screen on a hand-written run directory (fixed numbers: see tui_helpers.synthetic_run)."""
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.training import TrainingScreen

    from tui_helpers import synthetic_run, wait_for

    monkeypatch.chdir(tmp_path)
    if feature == "training_error":
        synthetic_run(tmp_path / "run", state="error", error="cannot write state.pt: No space left on device "
                                                             "(the previous one is intact)")
    else:
        synthetic_run(tmp_path / "run")
    from pathlib import Path

    app = InspectorApp(Options(model="", image=""), start=TrainingScreen(Path("run")))

    async def run_before(pilot):
        scr = pilot.app.screen
        await wait_for(pilot, lambda: scr.polls > 0 and scr.probes is not None and not scr._dirty_curves)
        await settle(pilot)
        for k in TRAINING_FEATURES.get(feature, []):
            await pilot.press(k)
            await settle(pilot)
        await pilot.pause(0.2)

    assert snap_compare(app, run_before=run_before, terminal_size=size)


COMPARISONS = {  # the three pairs the samples hold
    "compare_vit_cnn": ("fashion-vit-p7.safetensors", "fashion-cnn.safetensors", "fashion_0000_ankle-boot.png", []),
    "compare_patch_sizes": ("fashion-vit-p7.safetensors", "fashion-vit-p4.safetensors",
                            "fashion_0000_ankle-boot.png", ["r", "d"]),
    "compare_finetune": ("fashion-vit-p7.safetensors", "digits-vit-ft.safetensors", "mnist_8000_4.png",
                         ["j", "a", "l"]),
}


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("feature", list(COMPARISONS))
def test_compare_snapshot(snap_compare, feature, size):
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.compare import CompareScreen

    from conftest import ROOT
    from tui_helpers import wait_for

    a, b, image, keys = COMPARISONS[feature]
    s = ROOT / "samples"
    app = InspectorApp(Options(model="", image=""), start=CompareScreen(str(s / a), str(s / b), str(s / image)))

    async def run_before(pilot):
        await wait_for(pilot, lambda: pilot.app.screen.ready)
        await settle(pilot)
        for k in keys:
            await pilot.press(k)
            await settle(pilot)
        await pilot.pause(0.3)
        await settle(pilot)

    assert snap_compare(app, run_before=run_before, terminal_size=size)


@pytest.fixture(scope="module")
def projection_curves():
    """A real `sweep --projections --probes` result: the digits sample on the 300 MNIST images of tests/data."""
    from vitscope.data.datasets import get_dataset
    from vitscope.sweep import projection_sweep

    from conftest import MNIST_DIR, ROOT

    loaded = vitscope.load(str(ROOT / "samples" / "digits-vit.safetensors"))
    return projection_sweep(loaded, get_dataset("mnist", "test", str(MNIST_DIR)), batch_size=128, random_limit=100,
                            probes=True, probe_shots=10)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_projection_curves_snapshot(snap_compare, projection_curves, size):
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.projection_curves import ProjectionCurvesScreen

    app = InspectorApp(Options(model="", image=""),
                       start=ProjectionCurvesScreen(projection_curves, "digits-vit.safetensors on mnist test"))

    async def run_before(pilot):
        await settle(pilot)

    assert snap_compare(app, run_before=run_before, terminal_size=size)
