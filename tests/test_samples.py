"""Every model in samples/ opens in `export` and in the inspector (`info` is covered in test_load)."""
from __future__ import annotations

import asyncio
import json

import pytest

import vitscope
from vitscope.views import Session

from conftest import ROOT, run_cli
from tui_helpers import settle

SAMPLES = sorted((ROOT / "samples").glob("*.safetensors"))
IMAGE = ROOT / "samples" / "fashion_0021_sandal_pred-sneaker.png"
DIGIT = ROOT / "samples" / "mnist_8000_4.png"


def _image(path):
    return DIGIT if path.name.startswith("digits") else IMAGE


def test_samples_are_there():
    assert len(SAMPLES) >= 5 and any("cnn" in p.name for p in SAMPLES)


@pytest.mark.parametrize("model", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_exports(model, tmp_path):
    r = run_cli("export", str(model), str(_image(model)), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    pred = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert pred["top5"] and pred["kind"] == ("cnn" if "cnn" in model.name else "vit")
    assert (tmp_path / "out" / "gradcam.png").exists()


@pytest.mark.parametrize("model", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_opens_in_the_inspector(model):
    from vitscope.tui.app import InspectorApp, Options

    se = Session.open(vitscope.load(model, allow_cnn=True), _image(model))

    async def run():
        app = InspectorApp(Options(model=str(model), image=str(_image(model))), session=se)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            scr = app.screen
            title = str(scr.query_one("#view-title").render())
            if se.is_cnn:
                assert "Grad-CAM (last feature stage)" in title and "CNN" in str(scr.query_one("#topbar").render())
                await pilot.press("o")  # a ViT pane: refused with the reason, the CNN's map stays
                await pilot.pause()
                assert scr.state.pane == "gradcam"
                assert any("CNN" in n.message for n in app._notifications)
            else:
                assert "layer 0, mean of heads" in title
                await pilot.press("g")
                await settle(pilot)
                assert "Grad-CAM" in str(scr.query_one("#view-title").render())
            assert se.top_k(1)[0][1] in str(scr.query_one("#prediction").render())
        return app

    assert asyncio.run(run()).return_code in (None, 0)
