"""The view layer shared by the TUI and `vitscope export`: panes, scales, the saved picture."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitscope
from vitscope.export import ExportSettings, export
from vitscope.views import PANES, Session, ViewState

from conftest import TIMM_TINY, run_cli, tiny_timm
from tui_helpers import IMAGE, MODEL, make_app, settle


@pytest.fixture(scope="module")
def session():
    return Session.open(vitscope.load(MODEL), IMAGE)


def _save_tiny(tmp_path, name, arch, **kw):
    from vitscope.loaders import save_checkpoint
    from vitscope.loaders.timm_vit import default_data_config

    m = tiny_timm(arch, **kw)
    p = tmp_path / f"{name}.safetensors"
    kwargs = dict(TIMM_TINY, **kw)
    classes = [f"c{i}" for i in range(kwargs["num_classes"])]
    save_checkpoint(p, m, arch=arch, kwargs=kwargs, classes=classes, data_config=default_data_config(m))
    return p, m


def test_export_picture_is_what_the_screen_saved(session, tmp_path):
    """`s` in the inspector and `vitscope export --view` write the same PNG for the same state."""
    state = dict(layer=2, head=1, token=6)

    async def run():
        app = make_app(session, save_dir=str(tmp_path / "tui"), token="1,1", layer=2, head="1")
        (tmp_path / "tui").mkdir()
        async with app.run_test(size=(140, 40)) as pilot:
            await settle(pilot)
            assert app.screen.state.token == state["token"]
            await pilot.press("s")
            return app.screen.last_saved

    saved = asyncio.run(run())
    se = Session(session.loaded, session.trace, image_path=session.image_path)
    res = export(se, tmp_path / "exp", ExportSettings(view="attention", token=6, layer=2, head=1))
    assert len(res.files) == 1
    assert np.array_equal(np.asarray(Image.open(saved)), np.asarray(Image.open(res.files[0])))


def test_export_writes_every_available_pane(session, tmp_path):
    se = Session(session.loaded, session.trace, image_path=session.image_path)
    res = export(se, tmp_path, ExportSettings())
    names = {p.name for p in res.files}
    for p in PANES.values():
        if p.export_name:
            assert p.export_name in names
    data = np.load(tmp_path / "trace.npz")
    # the same numbers the panes show
    assert np.allclose(data["gradcam"], se.output(ViewState(pane="gradcam")).grid)
    assert np.allclose(data["head_ablation"], se.head_ablation(se.prediction))
    assert data["token_norms"].shape == (4, 4, 4)
    norms = session.trace.resid[1:, 1:].norm(dim=-1).reshape(4, 4, 4).numpy()
    assert np.allclose(data["token_norms"], norms, atol=1e-5)


def test_scales_and_values(session):
    for name in PANES:
        out = session.output(ViewState(pane=name, layer=1))
        if out.grid is not None:
            lo, hi = out.scale.lo, out.scale.hi
            if out.scale.fixed:
                assert (lo, hi) == (0.0, 1.0) and out.grid.min() >= 0 and out.grid.max() <= 1
            else:
                assert np.isclose(lo, out.grid.min()) and np.isclose(hi, out.grid.max())
            assert out.value_at(0, 0) == pytest.approx(float(out.grid[0, 0]))


def test_distilled_model_gets_class_projections(tmp_path):
    """Defect: get_classifier() of a distilled model is a tuple; projections were silently skipped."""
    p, m = _save_tiny(tmp_path, "deit", "deit_tiny_distilled_patch16_224")
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    r = run_cli("export", str(p), str(img), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    data = np.load(tmp_path / "out" / "trace.npz")
    for k in ("proj_topk_idx", "identifiability", "proj_target_logit"):
        assert k in data
    # the CLS projection at the last layer goes through the CLS classifier ``head``
    loaded = vitscope.load(p)
    tr = vitscope.trace(loaded, img)
    with torch.no_grad():
        ref = m.head(m.norm(tr.resid[-1]))[0]
    assert np.allclose(data["proj_target_logit"][-1, 0], ref[int(data["target"])].item(), atol=1e-4)


def test_headless_backbone_attention_rollout_norms(tmp_path):
    """Defect: a DINO-style backbone (num_classes=0) crashed export with IndexError."""
    p, _ = _save_tiny(tmp_path, "dino", "vit_small_patch14_dinov2", num_classes=0, init_values=1e-5,
                      patch_size=8)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    r = run_cli("export", str(p), str(img), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "without a classifier" in r.stdout
    files = {q.name for q in (tmp_path / "out").iterdir()}
    assert {"heads.png", "rollout.png", "norms.png", "trace.npz", "prediction.json"} <= files
    assert "gradcam.png" not in files
    pred = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert pred["target"] is None and pred["top5"] == []
    se = Session.open(vitscope.load(p), img)
    assert PANES["gradcam"].unavailable(se) and "backbone" in PANES["gradcam"].unavailable(se)
    assert PANES["norms"].unavailable(se) is None and PANES["rollout"].unavailable(se) is None

    async def run():
        from vitscope.tui.app import InspectorApp, Options

        app = InspectorApp(Options(model=str(p), image=str(img)), session=se)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            await pilot.press("g")  # class panes are off, and say why
            await pilot.pause()
            assert app.screen.state.pane == "attention"
            assert any("backbone" in n.message for n in app._notifications)
            await pilot.press("N")
            await settle(pilot)
            assert app.screen.state.pane == "norms"
            assert "backbone" in str(app.screen.query_one("#prediction").render())

    asyncio.run(run())


def test_default_colormap_survives_256_colours():
    """Over SSH (no COLORTERM) colours are reduced to the 256-colour palette: the low end of the default
    map must not become the terminal's black, or low values and the image edge vanish."""
    from rich.color import Color, ColorSystem

    from vitscope.render import COLORMAPS, DEFAULT_CMAP

    def to256(rgb):
        return Color.from_rgb(*rgb).downgrade(ColorSystem.EIGHT_BIT).get_truecolor()

    low = to256(COLORMAPS[DEFAULT_CMAP][0])
    assert sum(low) > 60, low  # inferno's (0, 0, 4) becomes (0, 0, 0) here
    assert sum(to256(COLORMAPS["inferno"][0])) < 10  # the reported problem, for the record
    steps = {to256(c) for c in COLORMAPS[DEFAULT_CMAP]}
    assert len(steps) >= 12  # still a readable ramp


def test_ctrl_c_quits(session):
    async def run():
        app = make_app(session)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("ctrl+c")
            await pilot.pause()
            return app

    app = asyncio.run(run())
    assert app.return_code in (None, 0) and not app.is_running


def test_info_of_a_backbone_says_it_has_no_classes(tmp_path):
    p, _ = _save_tiny(tmp_path, "dino", "vit_small_patch14_dinov2", num_classes=0, init_values=1e-5, patch_size=8)
    r = run_cli("info", str(p))
    assert r.returncode == 0 and "classes         none: a backbone without a classifier" in r.stdout, r.stdout


def test_256_colour_start_keeps_the_colour_bar_hues(session):
    """Reported: over 256 colours the overlay's low end (0.6 blend with a dark image) became navy while the
    colour bar's is purple. The 256-colour start opacity (0.8) keeps them on the same palette entry."""
    from rich.color import Color, ColorSystem

    from vitscope.render import COLORMAPS, DEFAULT_CMAP

    def entry(rgb):
        return Color.from_rgb(*(int(x) for x in rgb)).downgrade(ColorSystem.EIGHT_BIT).number

    low = COLORMAPS[DEFAULT_CMAP][0].astype(float)
    assert entry(0.6 * low) != entry(low)  # the reported mismatch, on a black background
    assert entry(0.8 * low) == entry(low)

    async def run():
        app = make_app(session, truecolor_missing=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            return app.screen.state.alpha

    assert asyncio.run(run()) == 0.8


def test_chefer_for_a_patch_query_is_not_swamped_by_its_own_identity_term(session):
    """Reported: with a patch query the map was flat except the query patch (R = I + ... puts 1 there)."""
    tok = session.layout.patch_token(2, 1)
    raw = session.relevance("chefer", session.prediction, tok)
    out = session.output(ViewState(pane="chefer", token=tok))
    others = np.delete(raw.ravel(), 2 * 4 + 1)
    assert raw[2, 1] > 0.9 and raw[2, 1] > 5 * others.max()  # the reported swamping, in the raw array
    assert out.grid[2, 1] == pytest.approx(others.max()) and out.scale.hi == pytest.approx(others.max())
    assert np.allclose(np.delete(out.grid.ravel(), 9), others) and "own relevance" in out.text[0]


def test_picture_cache_is_bounded(session):
    """Every distinct (state, size, cursor) draws a picture; a long session keeps only the most recent ones."""
    from vitscope.views import session as session_mod

    se = Session(session.loaded, session.trace, image_path=session.image_path)
    first = se.picture(ViewState(), (28, 28))
    for i in range(session_mod.MAX_PICTURES + 40):
        se.picture(ViewState(layer=i % 4, head=i % 5 if i % 5 < 4 else "mean"), (28 + i, 28 + i))
    assert len(se._pictures) == session_mod.MAX_PICTURES
    again = se.picture(ViewState(), (28, 28))  # evicted, drawn again: the same picture
    assert again is not first and np.array_equal(again, first)
