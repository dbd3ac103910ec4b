"""The inspector, driven with Textual's Pilot: every key and click changes what a person sees."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from PIL import Image

import vitscope
from vitscope.tui.app import InspectorApp, Options
from vitscope.tui.modals import ClassPicker, HelpScreen, OpenImage
from vitscope.tui.widgets import ColorBar, HeadGrid, OverviewGrid
from vitscope.views import PANES, Session, ViewState

from conftest import TIMM_TINY, tiny_timm
from hang_guard import FifoWatchdog, odd_paths
from tui_helpers import IMAGE, MODEL, SANDAL, make_app, settle, shown_picture, text, wait_for

SIZE = (140, 40)


@pytest.fixture(scope="module")
def session():
    return Session.open(vitscope.load(MODEL), IMAGE)


def test_loads_in_worker_and_shows_model_and_prediction():
    async def run():
        app = InspectorApp(Options(model=str(MODEL), image=str(IMAGE)))
        async with app.run_test(size=SIZE) as pilot:
            assert "loading" in text(app, "#topbar")  # first paint before the model exists
            await wait_for(pilot, lambda: app.inspector.session is not None)
            await pilot.pause()
            top = text(app, "#topbar")
            assert "4 layers x 4 heads" in top and "grid 4x4" in top
            assert not app.screen.query_one("#banner").display  # trained weights: no warning
            pred = text(app, "#prediction")
            assert app.inspector.session.top_k(1)[0][1] in pred and "▶" in pred
            t = app.inspector.timings
            assert t["first_paint"] < t["ready"]

    asyncio.run(run())


def test_grid_keys_move_and_both_axes_stop_at_the_edges(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            assert "layer 0, mean of heads, query CLS" in text(app, "#view-title")
            await pilot.press("h", "h", "j", "j")
            assert (scr.state.layer, scr.state.head) == (2, 2)
            assert "layer 2, head 2" in text(app, "#view-title")
            grid = scr.query_one(HeadGrid)
            assert (grid.sel_layer, grid.sel_head) == (2, 2)
            await pilot.press(*["l"] * 6)  # past the right edge: stops at "mean", no wrap
            assert scr.state.head == "mean"
            await pilot.press(*["h"] * 9)
            assert scr.state.head == 0
            await pilot.press(*["j"] * 9)  # past the last layer: stops
            assert scr.state.layer == 3
            await pilot.press("pageup", "pageup")
            assert scr.state.layer == 1
            await pilot.press("a")
            assert scr.state.head == "mean"
            # the picture shown is the session's picture for this state at the widget's size
            se = scr.session
            assert np.array_equal(shown_picture(app), se.picture(scr.state, scr._picture_size()))

    asyncio.run(run())


@pytest.mark.parametrize("name", [p.name for p in PANES.values() if p.key])
def test_every_pane_key_shows_its_pane_and_escape_backs_out(session, name):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press(PANES[name].key)
            await settle(pilot)
            assert scr.state.pane == name
            out = scr.session.output(scr.state)
            assert out.title.split("  ·")[0] in text(app, "#view-title")
            bar = scr.query_one(ColorBar)._spec
            assert bar is not None and bar[3].startswith(out.scale.label)  # every map has a scale
            await pilot.press("escape")
            assert scr.state.pane == "attention"

    asyncio.run(run())


def test_rollout_settings_are_editable_in_the_rollout_pane(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press("f")  # not the rollout pane: its keys do nothing
            assert scr.state.fusion == "mean"
            await pilot.press("r")
            before = shown_picture(app).copy()
            await pilot.press("f", "d", "d", "greater_than_sign")
            s = scr.state
            assert (s.fusion, s.discard, s.start_layer) == ("max", 0.2, 1)
            assert "rollout (max of heads, discard 0.2, from layer 1)" in text(app, "#view-title")
            expect = scr.session.rollout_grid(None, "max", 0.2, 1)
            from vitscope.analysis.rollout import attention_rollout, rollout_map
            ref = rollout_map(attention_rollout(scr.session.trace.attn, "max", 0.2, 1), scr.session.layout)
            assert np.allclose(expect, ref)
            assert not np.array_equal(before, shown_picture(app))
            await pilot.press("D", "less_than_sign")
            assert (scr.state.discard, scr.state.start_layer) == (0.1, 0)

    asyncio.run(run())


def test_token_mode_marks_the_picked_patch_and_cursor(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            plain = shown_picture(app).copy()
            await pilot.press("t")
            assert scr.token_mode and "TOKEN MODE" in text(app, "#view-title")
            assert scr.cursor == (2, 2)
            await pilot.press("l", "j")
            assert scr.cursor == (3, 3)
            cyan = (shown_picture(app) == (0, 255, 255)).all(-1)
            assert cyan.any()  # the cursor box is drawn
            await pilot.press("enter")
            assert not scr.token_mode and scr.state.token == 1 + 3 * 4 + 3
            assert "query patch (3, 3)" in text(app, "#view-title")
            pic = shown_picture(app)
            white = (pic == 255).all(-1)
            h, w = pic.shape[:2]
            assert white[3 * h // 4:, 3 * w // 4:].any()  # the picked patch keeps a mark after Enter
            assert not white[: h // 4, : w // 4].any()
            # the mark is corner brackets: the middle of the patch's edge stays visible
            y0 = 3 * h // 4
            assert not white[y0, 3 * w // 4 + (w // 4) // 2]
            assert "query patch (3, 3)" in str(scr.query_one(ColorBar).render_line(0).text)
            await pilot.press("c")
            assert scr.state.token is None and not np.array_equal(plain, shown_picture(app)) is False

    asyncio.run(run())


def test_numbers_colour_bar_and_values_toggle(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            out = scr.session.output(scr.state)
            line = scr.query_one(ColorBar).render_line(0).text
            from vitscope.render import format_value
            assert format_value(out.scale.lo) in line and format_value(out.scale.hi) in line
            r, c = np.unravel_index(int(np.argmax(out.grid)), out.grid.shape)
            assert f"max at ({r}, {c})" in line
            ent = scr.session.head_stats(None)["entropy"]
            from vitscope.analysis.attention import head_statistics
            mean_map = scr.session.trace.attn.mean(1, keepdim=True)
            assert np.allclose(ent[:, -1], head_statistics(mean_map, scr.session.layout)["entropy"][:, 0], atol=1e-5)
            assert f"L0 mean = {ent[0, -1]:.3f}" in text(app, "#cell-value")  # the mean column is the mean map's
            grid = scr.query_one(HeadGrid)
            await pilot.press("number_sign")
            assert grid.show_values
            row = grid.render_line(1).text
            from vitscope.tui.widgets.headgrid import cell_text
            assert " " + cell_text(float(ent[0, 0])) in row  # the values are in the cells

    asyncio.run(run())


def test_statistics_cycle_and_ablation_matches_export_sign(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press("n")
            assert "mean attention distance" in text(app, "#stat-label")
            await pilot.press("n", "n")
            assert "head ablation" in text(app, "#stat-label")
            await settle(pilot)
            grid = scr.query_one(HeadGrid)
            from vitscope.analysis.ablation import head_ablation
            se = scr.session
            ref = head_ablation(se.loaded.model, se.trace, se.prediction).logit_delta.numpy()
            assert np.allclose(grid.values[:, :-1], ref, atol=1e-5)  # the same quantity as trace.npz head_ablation

    asyncio.run(run())


def test_class_picker_sets_target(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press("C")
            assert isinstance(app.screen, ClassPicker)
            await pilot.press(*"sneak", "enter")
            await settle(pilot)
            assert scr.state.target == scr.session.spec.classes.index("Sneaker")
            assert "▶Sneaker" in text(app, "#prediction").replace(" ", "")
            await pilot.press("g")
            await settle(pilot)
            assert "for class Sneaker" in text(app, "#view-title")

    asyncio.run(run())


def test_open_image_completion_and_save_with_scale(session, tmp_path):
    Image.open(SANDAL).save(tmp_path / "sandal.png")

    async def run():
        app = make_app(session, save_dir=str(tmp_path))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press("O")
            assert isinstance(app.screen, OpenImage)
            inp = app.screen.query_one("#image-path")
            start = inp.value
            await pilot.press("x")  # the pre-filled folder is kept: typing appends
            assert inp.value == start + "x"
            await pilot.press("backspace")
            inp.value = str(tmp_path) + "/sa"
            await wait_for(pilot, lambda: inp._suggestion.endswith("sandal.png"))
            await pilot.press("tab")  # Tab accepts the completion shown
            assert inp.value == str(tmp_path / "sandal.png")
            await pilot.press("enter")
            await wait_for(pilot, lambda: scr.session.image_path.endswith("sandal.png"))
            await settle(pilot)
            assert "sandal.png" in text(app, "#topbar")
            await pilot.press("s")
            saved = scr.last_saved
            assert saved is not None and saved.parent == tmp_path and saved.exists()
            await pilot.press("s")
            assert scr.last_saved != saved and scr.last_saved.exists()  # never overwrites
            img = np.asarray(Image.open(saved))
            assert img.shape[0] > 300 and img.shape[1] >= 420  # picture + colour bar + text lines
            from vitscope.render import COLORMAPS
            lut = COLORMAPS[scr.state.cmap]
            row_has_bar = [(np.isin(img[y].reshape(-1, 3).view([("", img.dtype)] * 3), lut.view(
                [("", lut.dtype)] * 3)).sum() > 200) for y in range(img.shape[0])]
            assert any(row_has_bar)  # the colour bar is in the saved picture

    asyncio.run(run())


def test_path_completion_lists_a_folder_once_and_follows_its_changes(tmp_path, monkeypatch):
    """The open prompt's completion: what a listing of the folder gives (folders end in /, hidden names only after
    a dot), read from one os.scandir per folder and state of it, not one per key (a 20,000-image folder took
    86 ms a key on the screen's thread)."""
    import os

    from vitscope.tui.modals import PathSuggester

    for name in ("b.png", "a.png", "ab.png", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "abc").mkdir()
    listings = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listings.append(path) or scandir(path))
    s, d = PathSuggester(), f"{tmp_path}{os.sep}"

    def want(typed: str) -> str | None:  # independently: the smallest matching name of a plain listing
        folder, stem = (tmp_path, "") if typed == d else (tmp_path, typed[len(d):])
        names = sorted(p.name + (os.sep if p.is_dir() else "") for p in folder.iterdir()
                       if p.name.startswith(stem) and (stem.startswith(".") or not p.name.startswith(".")))
        return typed + names[0][len(stem):] if names else None

    async def run():
        for typed in (d, d + "a", d + "ab", d + "abc", d + "b", d + "c", d + ".", d + ".h"):
            assert await s.get_suggestion(typed) == want(typed), typed
        assert listings == [tmp_path]  # eight keys, one listing
        assert await s.get_suggestion(d + "ab") == d + "ab.png"
        (tmp_path / "ab.jpg").write_bytes(b"")  # the folder changed: listed again, the new name offered
        os.utime(tmp_path, ns=(0, os.stat(tmp_path).st_mtime_ns + 1))
        assert await s.get_suggestion(d + "ab") == d + "ab.jpg" and len(listings) == 2
        assert await s.get_suggestion(d + "abc") == d + "abc" + os.sep
        assert await s.get_suggestion(str(tmp_path / "missing" / "x")) is None
        assert await s.get_suggestion("") is None

    asyncio.run(run())


def test_help_is_generated_and_scrolls_and_palette_says_what(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            for p in PANES.values():
                assert p.help in app.screen.text
            box = app.screen.query_one("#help-box")
            await pilot.press("j", "j", "j", "pagedown")
            await pilot.pause()
            assert box.scroll_y > 0
            await pilot.press("escape")
            assert app.screen is scr
            entries = scr.palette_entries()
            names = [e[0] for e in entries]
            assert any(n.startswith("Grad-CAM (g)") for n in names)
            assert not any("vitscope:" in n for n in names)
            await pilot.press("ctrl+p")
            await pilot.press(*"rollout")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
            assert scr.state.pane == "rollout"

    asyncio.run(run())


def test_mouse_clicks_select_cell_and_patch(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            grid = scr.query_one(HeadGrid)
            await pilot.click(HeadGrid, offset=(4 + grid.cell * 2 + 1, 3))
            assert (scr.state.layer, scr.state.head) == (2, 2)
            pic = scr.query_one("#picture")
            await pilot.click("#picture", offset=(pic.size.width // 2 + 2, pic.size.height - 3))
            assert scr.state.token is not None
            r, c = scr.session.layout.patch_position(scr.state.token)
            assert r == 3 and c in (2, 3)

    asyncio.run(run())


def test_resize_is_not_one_step_behind(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=(160, 40)) as pilot:
            await settle(pilot)
            grid = app.screen.query_one(HeadGrid)
            assert not grid.compact
            await pilot.resize_terminal(80, 24)
            await pilot.pause()
            assert grid.compact
            await pilot.resize_terminal(160, 40)
            await pilot.pause()
            assert not grid.compact
            await pilot.resize_terminal(90, 30)
            await pilot.pause()
            assert grid.compact

    asyncio.run(run())


def test_small_terminal_keeps_names_warning_and_table(session):
    async def run():
        from dataclasses import replace
        se = Session(replace(session.loaded, spec=replace(session.spec, random_weights=True)), session.trace,
                     image_path=session.image_path)
        app = InspectorApp(Options(model=str(MODEL), image=str(IMAGE)), session=se)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            top = text(app, "#topbar")
            assert "fashion-vit-p7" in top and "fashion_0000_ankle-boot.png" in top
            banner = app.screen.query_one("#banner")
            assert banner.display and banner.region.width == 80 and "RANDOM WEIGHTS" in str(banner.render())
            await pilot.press("p")
            await settle(pilot)
            table = app.screen.query_one("#table")
            assert table.display and table.region.height >= 3
            assert table.region.bottom <= 23  # the projection table is on screen, not pushed off

    asyncio.run(run())


def test_projection_view_table_follows_layer_and_token(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press("p")
            await settle(pilot)
            table = scr.query_one("#table")
            L = scr.session.spec.num_layers
            assert table.row_count == L and table.cursor_row == 0
            se = scr.session
            P = se.projections(se.prediction)
            # the last layer's CLS row: its top class is the prediction (paper convention)
            last = table.get_row_at(L - 1)
            assert last[1].startswith(se.spec.classes[se.prediction])
            await pilot.press("j", "j")
            assert table.cursor_row == 2 and "layer 2" in text(app, "#view-title")
            before = [table.get_row_at(i) for i in range(L)]
            await pilot.press("t", "enter")  # query = a patch: the table is that token's
            after = [table.get_row_at(i) for i in range(L)]
            assert before != after
            tok = scr.state.token
            top0 = se.spec.classes[int(P.topk_idx[0, tok, 0])]
            assert after[0][1].startswith(top0[:12])
            grid = scr.session.output(scr.state).grid
            assert np.allclose(grid, P.r[2, 1:].reshape(4, 4).numpy())

    asyncio.run(run())


def test_overview_of_a_12x12_model_is_labelled_and_pages(tmp_path):
    from vitscope.loaders import save_checkpoint
    from vitscope.loaders.timm_vit import default_data_config

    kw = dict(TIMM_TINY, depth=12, num_heads=12, embed_dim=96, img_size=112, patch_size=8)
    m = tiny_timm(**kw)
    p = tmp_path / "big.safetensors"
    save_checkpoint(p, m, arch="vit_tiny_patch16_224", kwargs=kw, classes=[f"c{i}" for i in range(10)],
                    data_config=default_data_config(m))
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(img)
    se = Session.open(vitscope.load(p), img)

    async def run():
        for size in ((160, 48), (80, 24)):
            app = InspectorApp(Options(model=str(p), image=str(img)), session=se)
            async with app.run_test(size=size) as pilot:
                await settle(pilot)
                await pilot.press("o")
                await pilot.pause()
                ov = app.screen.query_one(OverviewGrid)
                (r0, nr), (c0, nc) = ov.window
                assert nr >= 1 and nc >= 1
                tw, th, _, _ = ov._geom
                assert tw >= 14 and th >= 14  # at least one pixel per patch (14x14 grid)
                header = ov.render_line(0).text
                assert "mean" in header  # the window starts around the selection (the mean column)
                await pilot.press(*["h"] * 12)
                await pilot.pause()
                assert "h0" in ov.render_line(0).text
                assert any("L0" in ov.render_line(y).text for y in range(1, ov.size.height))
                if nr < 12:
                    assert "showing layers" in app.screen.query_one(ColorBar)._spec[3]
                    await pilot.press(*["j"] * 11)
                    await pilot.pause()
                    (r0, nr), _ = ov.window
                    assert r0 + nr == 12  # the window followed the selection to the last layer
                    assert any("L11" in ov.render_line(y).text for y in range(1, ov.size.height))

    asyncio.run(run())


def test_two_workers_never_hook_the_model_at_once(session):
    """Reproduced: ablation (inference mode) and a gradient method at once failed ('cannot register a hook
    on a tensor that doesn't require gradient'). With the model lock both succeed, every time."""
    from vitscope.analysis.ablation import head_ablation
    from vitscope.analysis.gradients import attention_gradients, gradcam

    m, tr = session.loaded.model, session.trace
    errors = []

    def ablate():
        try:
            for _ in range(10):
                head_ablation(m, tr, 0)
        except Exception as e:  # noqa: BLE001 - the test reports any failure
            errors.append(e)

    def grads():
        try:
            for _ in range(10):
                attention_gradients(m, tr.input, 0)
                gradcam(m, tr.input, 0, tr.layout)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ablate), threading.Thread(target=grads), threading.Thread(target=ablate)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_keys_during_background_work_do_not_crash(session):
    """n n n g: ablation and Grad-CAM requested together (the reported crash)."""
    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("n", "n", "n", "g", "e", "p", "g")
            await settle(pilot)
            assert app.screen.state.pane == "gradcam"
            assert app.return_code in (None, 0)
            assert "error" not in text(app, "#status")

    asyncio.run(run())


def test_cancel_stops_ablation_and_shows_progress(monkeypatch, session):
    import vitscope.analysis.ablation as ab
    real = ab.head_ablation
    started = threading.Event()

    def slow(model, trace, target=None, mode="zero", reference=None, progress=None):
        def prog(done, total):
            started.set()
            time.sleep(0.3)
            if progress:
                progress(done, total)
        return real(model, trace, target, mode, reference, prog)

    monkeypatch.setattr(ab, "head_ablation", slow)

    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("n", "n", "n")
            await wait_for(pilot, started.is_set)
            await pilot.pause(0.4)
            assert app.screen.query_one("#progress-row").display
            assert "ablating every head" in text(app, "#progress-label")
            await pilot.press("x")
            await settle(pilot, timeout=5)
            assert "cancelled" in text(app, "#status")
            assert not app.screen.query_one("#progress-row").display

    asyncio.run(run())


def test_a_crash_exits_non_zero(session, monkeypatch):
    from vitscope.cli import _inspect_exit
    from vitscope.tui.screens.inspector import InspectorScreen

    def boom(self, *a):
        raise RuntimeError("planted")

    monkeypatch.setattr(InspectorScreen, "action_save", boom)

    app = make_app(session)

    async def run():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("s")
            await pilot.pause()

    with pytest.raises(RuntimeError, match="planted"):  # Pilot re-raises what crashed the app
        asyncio.run(run())
    assert app.return_code == 1 and _inspect_exit(app) == 1


def test_no_color_renders(session, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")

    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("o", "o", "g")
            await settle(pilot)
            svg = app.export_screenshot()  # renders every line through the monochrome filter
            assert "layer" in svg or "Grad-CAM" in svg
        return app

    app = asyncio.run(run())
    assert app.return_code in (None, 0)


def test_start_state_from_options(session):
    async def run():
        app = make_app(session, token="2,1", target="Sandal", layer=3, head="1")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            s = app.screen.state
            assert (s.layer, s.head, s.token) == (3, 1, 1 + 2 * 4 + 1)
            assert s.target == app.screen.session.spec.classes.index("Sandal")

    asyncio.run(run())


@pytest.mark.parametrize("key,kind,words", [("O", "fifo", "FIFO"), ("O", "directory", "--dataset folder:"),
                                            ("O", "text", "not an image"), ("M", "fifo", "FIFO"),
                                            ("M", "symlink_to_device", "character device")])
def test_open_prompts_show_the_error_in_the_prompt_and_never_hang(session, tmp_path, key, kind, words):
    """O (open image) and M (second model): a FIFO, a device or a bad file is refused inside the prompt, which
    stays open; Esc closes it and q quits (the issue: a FIFO hung the app and q left a hung process)."""
    paths = odd_paths(tmp_path / "odd")
    (tmp_path / "notes.png").write_text("not an image")
    path, _ = paths[kind] if kind in paths else (tmp_path / "notes.png", "")

    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            before = scr.session.image_path
            await pilot.press(key)
            assert isinstance(app.screen, OpenImage)
            app.screen.query_one("#image-path").value = str(path)
            await pilot.press("enter")
            await wait_for(pilot, lambda: words in text(app, "#prompt-error"), timeout=20)
            assert isinstance(app.screen, OpenImage) and str(path) in text(app, "#prompt-error")
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is scr and scr.session.image_path == before
            await pilot.press("q")
            await pilot.pause()
        assert app.return_code in (0, None)

    with FifoWatchdog([paths["fifo"][0]]) as dog:
        asyncio.run(run())
    assert not dog.fired, "the prompt blocked on the FIFO"


@pytest.mark.parametrize("accept", [False, True])
def test_prompt_closed_while_its_check_runs(session, tmp_path, accept):
    """Esc while the path is being checked (a big image decoding): the late answer, a refusal or an
    acceptance, is dropped; the inspector stays, nothing crashes."""
    release = threading.Event()
    checked = []

    def slow_check(path: str) -> None:
        release.wait(10)
        checked.append(path)
        if not accept:
            raise vitscope.VitscopeError("refused late", path)

    async def run():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            scr = app.screen
            app.push_screen(OpenImage(str(tmp_path) + "/", check=slow_check))
            await pilot.pause()
            await pilot.press("x", "enter")
            assert "checking" in text(app, "#prompt-error")
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is scr
            release.set()
            await wait_for(pilot, lambda: checked)
            await pilot.pause(0.2)
            assert app.screen is scr and app.return_code is None
        return app

    asyncio.run(run())
