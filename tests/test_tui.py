"""The inspector, driven with Textual's Pilot: every key and click changes what a person sees."""
from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from PIL import Image

import vitscope
from vitscope.inspection import Inspection
from vitscope.tui.app import InspectorApp, Options
from vitscope.tui.screens import ClassPicker, HelpScreen, OpenImage
from vitscope.tui.widgets import HalfCellImage, HeadGrid

from conftest import ROOT

MODEL = ROOT / "samples" / "fashion-vit-p7.safetensors"
IMAGE = ROOT / "samples" / "fashion_0000_ankle-boot.png"
SIZE = (140, 40)


@pytest.fixture(scope="module")
def inspection():
    return Inspection.open(vitscope.load(MODEL), IMAGE)


def make_app(inspection, **opts) -> InspectorApp:
    insp = Inspection(inspection.loaded, inspection.trace, inspection.image_path)
    return InspectorApp(Options(model=str(MODEL), image=str(IMAGE), **opts), inspection=insp)


def text(app, selector: str) -> str:
    return str(app.query_one(selector).render())


async def _wait(pilot, cond, timeout=60.0):
    t = 0.0
    while not cond():
        await pilot.pause(0.1)
        t += 0.1
        assert t < timeout, "timed out waiting for the app"


def test_loads_in_worker_and_shows_model_and_prediction():
    async def run():
        app = InspectorApp(Options(model=str(MODEL), image=str(IMAGE)))
        async with app.run_test(size=SIZE) as pilot:
            assert "loading" in text(app, "#topbar")  # first paint before the model exists
            await _wait(pilot, lambda: app.insp is not None)
            await pilot.pause()
            top = text(app, "#topbar")
            assert "4 layers x 4 heads" in top and "grid 4x4" in top and "RANDOM" not in top
            pred = text(app, "#prediction")
            best = app.insp.top_k(1)[0][1]
            assert best in pred and "▶" in pred
            assert app.timings["first_paint"] < app.timings["ready"]

    asyncio.run(run())


def test_grid_keys_move_selection_and_title(inspection):
    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert "layer 0, mean of heads, query CLS" in text(app, "#view-title")
            await pilot.press("j", "j", "l")
            assert app.view_state.layer == 2 and app.view_state.head == 0
            assert "layer 2, head 0" in text(app, "#view-title")
            grid = app.query_one(HeadGrid)
            assert (grid.sel_layer, grid.sel_head) == (2, 0)
            await pilot.press("k", "right", "right", "left", "down")
            assert (app.view_state.layer, app.view_state.head) == (2, 1)
            await pilot.press("pageup", "pageup", "pageup")
            assert app.view_state.layer == 0
            await pilot.press("pagedown")
            assert app.view_state.layer == 1
            await pilot.press("a")
            assert app.view_state.head == "mean" and "mean of heads" in text(app, "#view-title")
            await pilot.press("a")
            assert app.view_state.head == 0
            # the picture shown is the inspection's picture for this state
            want = app.insp.picture(app.view_state)
            assert app.query_one(HalfCellImage)._image is want

    asyncio.run(run())


def test_panes_opacity_colormap_view_statistic(inspection):
    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("o")
            assert "overview: rows = 4 layers, columns = 4 heads + mean" in text(app, "#view-title")
            await pilot.press("o", "r")
            assert "rollout (mean, discard 0) of CLS" in text(app, "#view-title")
            await pilot.press("r", "right_square_bracket")
            assert "opacity 0.7" in text(app, "#view-title")
            await pilot.press("left_square_bracket", "left_square_bracket")
            assert app.view_state.alpha == 0.5
            await pilot.press("m")
            assert "magma" in text(app, "#view-title")  # inferno -> magma
            await pilot.press("v")
            assert "map," in text(app, "#view-title")
            await pilot.press("v")
            assert "image," in text(app, "#view-title")
            pic = app.query_one(HalfCellImage)._image
            assert np.array_equal(pic, app.insp.image)  # image only: the untouched input
            await pilot.press("n")
            assert "mean attention distance" in text(app, "#stat-label")
            stats = app.insp.head_stats(None)["distance"]
            assert np.array_equal(app.query_one(HeadGrid).values, stats)

    asyncio.run(run())


def test_token_mode_and_cls(inspection):
    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("t")
            assert "TOKEN MODE" in text(app, "#view-title")
            start = app.patch_cursor
            await pilot.press("l", "j", "enter")
            want = (start[0] + 1, start[1] + 1)
            assert not app.token_mode
            assert app.view_state.token == app.insp.layout.patch_token(*want)
            assert f"query patch {want}" in text(app, "#view-title").replace("patch (", "patch (")
            await pilot.press("c")
            assert app.view_state.token is None and "query CLS" in text(app, "#view-title")
            await pilot.press("t", "escape")
            assert not app.token_mode

    asyncio.run(run())


def test_class_picker_sets_target(inspection):
    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("C")
            await pilot.pause()
            assert isinstance(app.screen, ClassPicker)
            await pilot.press(*"pllvr")  # fuzzy: P-u-LL-o-V-e-R
            await pilot.press("enter")
            await pilot.pause()
            assert app.insp.target == app.insp.spec.classes.index("Pullover")
            assert "▶" in text(app, "#prediction") and "Pullover" in text(app, "#prediction")

    asyncio.run(run())


def test_open_image_and_save(inspection, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = ROOT / "samples" / "fashion_0001_pullover.png"

    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("O")
            await pilot.pause()
            assert isinstance(app.screen, OpenImage)
            inp = app.screen.query_one("Input")
            inp.value = str(other)
            await pilot.press("enter")
            await _wait(pilot, lambda: "pullover" in text(app, "#topbar"))
            await pilot.press("s")
            await pilot.pause()
            saved = app.last_saved
            assert saved is not None and saved.exists() and saved.parent == tmp_path
            assert Image.open(saved).size[0] >= 224
            await pilot.press("s")  # a second save never overwrites the first
            assert app.last_saved != saved and saved.exists()
            # a bad image is reported in the app, not a crash
            await pilot.press("O")
            await pilot.pause()
            app.screen.query_one("Input").value = str(tmp_path / "missing.png")
            await pilot.press("enter")
            await pilot.pause(0.5)
            assert "pullover" in text(app, "#topbar")

    asyncio.run(run())


def test_help_and_palette(inspection):
    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            titles = [c.title for c in app.get_system_commands(app.screen)]
            for want in ("overview (o)", "rollout (r)", "token (t)", "save (s)", "class (C)", "open (O)"):
                assert want in titles

    asyncio.run(run())


def test_mouse_clicks_select_cell_and_patch(inspection):
    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            grid = app.query_one(HeadGrid)
            # row 1 + layer, column 4 + cell * head
            await pilot.click(HeadGrid, offset=(4 + grid.cell * 2 + 1, 1 + 3))
            assert (app.view_state.layer, app.view_state.head) == (3, 2)
            img = app.query_one(HalfCellImage)
            x0, y0, tw, th = img._box
            # click the centre of the bottom-right patch of the 4x4 grid
            await pilot.click(HalfCellImage, offset=(x0 + tw * 7 // 8, y0 + (th // 2) * 7 // 8))
            assert app.view_state.token == app.insp.layout.patch_token(3, 3)

    asyncio.run(run())


def test_bad_model_shows_message_not_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")

    async def run():
        app = InspectorApp(Options(model=str(bad), image=str(IMAGE)))
        async with app.run_test(size=SIZE) as pilot:
            await _wait(pilot, lambda: app.error is not None)
            status = text(app, "#status")
            assert "not a PyTorch checkpoint" in status and "Traceback" not in status
            await pilot.press("j", "l", "o", "s")  # keys do nothing harmful without a model

    asyncio.run(run())


def test_start_state_from_options(inspection):
    async def run():
        app = make_app(inspection, token="2,1", layer=3, head="2", target="Sneaker")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            s = app.view_state
            assert (s.layer, s.head, s.token) == (3, 2, app.insp.layout.patch_token(2, 1))
            assert app.insp.target == app.insp.spec.classes.index("Sneaker")

    asyncio.run(run())


def test_small_terminal_compact_grid(inspection):
    async def run():
        app = make_app(inspection)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert app.query_one(HeadGrid).compact
            await pilot.press("j", "o", "o")
            await pilot.resize_terminal(120, 30) if hasattr(pilot, "resize_terminal") else None
            await pilot.pause()
            assert app.view_state.layer == 1

    asyncio.run(run())


KEYS = list("hjklaotcrmvnsCgepG") + ["left", "right", "up", "down", "pageup", "pagedown", "enter", "escape",
                                   "left_square_bracket", "right_square_bracket", "question_mark", "tab", "x", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("start", ["main", "token", "overview", "rollout", "help", "picker"])
def test_random_key_fuzz(inspection, tmp_path, monkeypatch, start):
    """500 random keypresses from each screen: no exception, and the app stays consistent."""
    monkeypatch.chdir(tmp_path)
    rng = random.Random(hash(start) % 1000)

    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            first = {"token": ["t"], "overview": ["o"], "rollout": ["r"], "help": ["question_mark"],
                     "picker": ["C"]}.get(start, [])
            await pilot.press(*first)
            for _ in range(500):
                await pilot.press(rng.choice(KEYS))
            await pilot.pause()
            L, H = app.insp.spec.num_layers, app.insp.spec.num_heads
            assert 0 <= app.view_state.layer < L and app.view_state.head in [*range(H), "mean"]

    asyncio.run(run())


def test_importance_statistic_is_computed_in_a_worker(inspection):
    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("n", "n", "n")
            assert "head importance" in text(app, "#stat-label")
            await _wait(pilot, lambda: app.insp.has_cached("importance", app.insp.target_class))
            await pilot.pause()
            from vitscope.analysis.ablation import head_ablation

            want = -head_ablation(app.insp.loaded.model, app.insp.trace, app.insp.target_class).logit_delta.numpy()
            assert np.allclose(app.query_one(HeadGrid).values, want, atol=1e-5)

    asyncio.run(run())


def test_large_grid_scrolls_to_selection():
    """A 24-layer x 16-head model (ViT-L shape) in a small terminal: compact cells, selection kept in view."""
    import timm

    from vitscope.loaders import Loaded
    from vitscope.loaders.timm_vit import make_spec

    m = timm.create_model("vit_large_patch16_224", img_size=32, patch_size=8, embed_dim=64, num_classes=3).eval()
    L = Loaded(m, make_spec(m, family="timm", arch="vit_large_patch16_224", kwargs={}, source="large",
                            classes=None, data_config=None, random_weights=True))
    insp = Inspection.open(L, IMAGE)

    async def run():
        app = InspectorApp(Options(model="large", image=str(IMAGE)), inspection=insp)
        async with app.run_test(size=(100, 24)) as pilot:
            await pilot.pause()
            grid = app.query_one(HeadGrid)
            assert grid.compact and grid.values.shape == (24, 16)
            await pilot.press(*["j"] * 20)
            await pilot.pause()
            scroll = app.query_one("#grid-scroll")
            assert app.view_state.layer == 20
            assert scroll.scroll_y <= 21 < scroll.scroll_y + scroll.size.height
            assert "RANDOM" in text(app, "#topbar")

    asyncio.run(run())


def test_gradient_and_projection_panes(inspection):
    from vitscope.analysis.gradients import gradcam
    from vitscope.render import overlay

    async def run():
        app = make_app(inspection)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            target = app.insp.spec.classes[app.insp.target_class]
            await pilot.press("g")
            await _wait(pilot, lambda: "Grad-CAM" in text(app, "#view-title"))
            await pilot.pause()
            want = gradcam(app.insp.loaded.model, app.insp.trace.input, app.insp.target_class, app.insp.layout)
            shown = app.query_one(HalfCellImage)._image
            assert np.array_equal(shown, overlay(app.insp.image, want.numpy(), 0.6, "inferno"))
            assert target in text(app, "#view-title")
            await pilot.press("e")
            await _wait(pilot, lambda: "Chefer relevance of CLS" in text(app, "#view-title"))
            await pilot.press("G")
            await _wait(pilot, lambda: "gradient rollout" in text(app, "#view-title"))
            await pilot.press("p")
            await _wait(pilot, lambda: "identifiability" in text(app, "#view-title"))
            await pilot.pause()
            panel = text(app, "#projection")
            top = app.insp.projection_top(0, None)
            assert "L0 CLS projects to" in panel and top[0][0][:16] in panel
            await pilot.press("j", "j", "j")
            # at the last layer the CLS projection is the prediction itself
            last = app.insp.projection_top(3, None)
            assert last[0][0] == app.insp.top_k(1)[0][1]
            assert abs(last[0][1] - app.insp.top_k(1)[0][2]) < 1e-5
            await pilot.press("p")
            assert app.view_state.pane == "attention"

    asyncio.run(run())


def test_path_completion(tmp_path):
    from vitscope.tui.screens import PathSuggester, fuzzy_score

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "boot.png").write_bytes(b"x")
    (tmp_path / "images" / "bag.png").write_bytes(b"x")
    s = PathSuggester()
    assert asyncio.run(s.get_suggestion(str(tmp_path / "ima"))) == str(tmp_path / "images") + "/"
    assert asyncio.run(s.get_suggestion(str(tmp_path / "images" / "bo"))) == str(tmp_path / "images" / "boot.png")
    assert asyncio.run(s.get_suggestion(str(tmp_path / "nothing-here"))) is None
    assert fuzzy_score("pllvr", "Pullover") is not None and fuzzy_score("xyz", "Pullover") is None
    assert fuzzy_score("coat", "Coat") < fuzzy_score("cat", "Coat")
