"""vitscope compare, headless: two models on one image, checked against independent computations."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

import vitscope
from vitscope.compare import compare, find_parent, recorded_parent, resample
from vitscope.data.datasets import get_dataset
from vitscope.loaders.checkpoint import file_hash

from conftest import MNIST_DIR, ROOT, run_cli

S = ROOT / "samples"
P7, P4, CNN, FT = (S / n for n in ("fashion-vit-p7.safetensors", "fashion-vit-p4.safetensors",
                                   "fashion-cnn.safetensors", "digits-vit-ft.safetensors"))
DIGIT, BOOT = S / "mnist_8000_4.png", S / "fashion_0000_ankle-boot.png"


@pytest.fixture(scope="module")
def finetune_dir(tmp_path_factory):
    """`vitscope compare FINETUNED IMAGE`: the parent is found by the sha256 the finetune records."""
    out = tmp_path_factory.mktemp("cmp") / "ft"
    r = run_cli("compare", str(FT), str(DIGIT), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "parent: fashion-vit-p7.safetensors -> digits-vit-ft.safetensors" in r.stdout
    return out


def test_head_js_equals_scipy_on_the_two_exports(finetune_dir):
    out = finetune_dir
    a, b = np.load(out / "a" / "trace.npz"), np.load(out / "b" / "trace.npz")
    with np.load(out / "compare.npz") as z:
        got = z["head_js"]
    L, H = a["attn"].shape[:2]
    want = np.array([[jensenshannon(a["attn"][l, h, 0], b["attn"][l, h, 0], base=2) for h in range(H)]
                     for l in range(L)])  # CLS row (token 0) over every key, CLS included
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.shape == (4, 4) and 0 < got.mean() < 1
    info = json.loads((out / "compare.json").read_text())
    assert info["parent"]["sha256"] == file_hash(P7) and "sha256 matches" in info["parent"]["found"]
    assert info["a"]["name"] == "parent" and info["b"]["name"] == "finetuned"
    assert info["head_js"]["mean"] == pytest.approx(float(want.mean()), abs=1e-6)


def test_each_side_is_exactly_what_export_writes(finetune_dir, tmp_path):
    r = run_cli("export", str(FT), str(DIGIT), "--out", str(tmp_path / "e"), "--faithfulness")
    assert r.returncode == 0, r.stderr
    mine = sorted(p.relative_to(finetune_dir / "b").as_posix() for p in (finetune_dir / "b").rglob("*"))
    theirs = sorted(p.relative_to(tmp_path / "e").as_posix() for p in (tmp_path / "e").rglob("*"))
    assert mine == theirs
    x, y = np.load(finetune_dir / "b" / "trace.npz"), np.load(tmp_path / "e" / "trace.npz")
    for k in ("attn", "logits", "rollout", "gradcam"):
        np.testing.assert_array_equal(x[k], y[k])


def test_resampling_keeps_a_one_hot_patch_where_it_was():
    g = np.zeros((4, 4))
    g[1, 2] = 1.0
    up = resample(g, (28, 28))  # patch 7: rows 7..13, columns 14..20
    ys, xs = np.nonzero(up)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (7, 13, 14, 20) and up.sum() == 49
    g7 = np.zeros((7, 7))
    g7[3, 5] = 1.0
    ys, xs = np.nonzero(resample(g7, (30, 30)))  # not a multiple: the pixels whose centre lies in the patch
    assert ys.min() >= 3 * 30 // 7 and ys.max() < 4 * 30 / 7 + 1 and xs.min() >= 5 * 30 // 7 and xs.max() < 30


def test_parent_found_and_a_wrong_parent_refused(tmp_path):
    child = vitscope.load(FT)
    sha = recorded_parent(child)
    path, how = find_parent(str(FT), sha)
    assert path.resolve() == P7.resolve() and "sha256 matches" in how
    with pytest.raises(vitscope.VitscopeError, match="not the parent of digits-vit-ft"):
        find_parent(str(FT), sha, str(P4))
    r = run_cli("compare", str(FT), str(DIGIT), "--parent", str(P4), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "not the parent" in r.stderr and "Traceback" not in r.stderr
    lone = tmp_path / "lone"  # the child alone, nothing beside it: said plainly
    lone.mkdir()
    (lone / FT.name).write_bytes(FT.read_bytes())
    r = run_cli("compare", str(lone / FT.name), str(DIGIT), "--out", str(tmp_path / "y"), cwd=tmp_path)
    assert r.returncode == 2 and "pass --parent FILE" in r.stderr
    r = run_cli("compare", str(P7), str(DIGIT), "--out", str(tmp_path / "z"))
    assert r.returncode == 2 and "records no parent" in r.stderr


def test_vit_against_cnn_falls_back_to_gradcam_and_ranks_every_map(tmp_path):
    res = compare(vitscope.load(P7), vitscope.load(CNN, allow_cnn=True), str(BOOT), tmp_path)
    assert "head_js" not in res and any("B has no rollout: its Grad-CAM stands in" in n for n in res["notes"])
    table = res["faithfulness"]["table"]
    assert {r["model"] for r in table} == {"a", "b"} and "gradcam" in {r["method"] for r in table if r["model"] == "b"}
    scores = [r["score"] for r in table]
    assert scores == sorted(scores, reverse=True)
    for r in table:  # the rows are the two exports' faithfulness.json
        side = json.loads((tmp_path / r["model"] / "faithfulness.json").read_text())["methods"]
        key = "random" if r["method"] == "random (baseline)" else r["method"]
        assert r["score"] == pytest.approx(side[key]["insertion_auc"] - side[key]["deletion_auc"])
    with np.load(tmp_path / "compare.npz") as z:
        assert z["a_rollout"].shape == z["b_rollout"].shape == (28, 28)
        np.testing.assert_allclose(z["b_rollout"], z["b_gradcam"])  # the stand-in, said so
    assert (tmp_path / "compare-rollout.png").is_file()


def test_patch_sizes_resampled_to_the_image(tmp_path):
    res = compare(vitscope.load(P7), vitscope.load(P4), str(BOOT), tmp_path)
    assert "head_js" not in res and res["a"]["grid"] == [4, 4] and res["b"]["grid"] == [7, 7]
    with np.load(tmp_path / "compare.npz") as z:
        a, b, d = z["a_rollout"], z["b_rollout"], z["diff_rollout"]
    assert a.shape == b.shape == d.shape == (28, 28)
    np.testing.assert_allclose(d, b - a, atol=1e-6)
    assert len(np.unique(a)) <= 16 and len(np.unique(b)) > 16  # the two granularities, side by side
    with np.load(tmp_path / "compare.npz") as z:
        for side, model, patch in (("a", P7, 7), ("b", P4, 4)):
            se_stats = vitscope.trace(vitscope.load(model), str(BOOT))
            from vitscope.analysis.attention import head_statistics

            want = head_statistics(se_stats.attn.numpy(), se_stats.layout)["distance"] * patch  # patches -> px
            np.testing.assert_allclose(z[f"{side}_distance_px"], want, rtol=1e-5)
            assert res["layers"][side]["distance_px_mean"] == pytest.approx(want.mean(1).tolist(), rel=1e-5)
    assert (tmp_path / "compare-layers.png").is_file()


def test_dataset_mean_head_js_and_accuracies(tmp_path):
    ds = get_dataset("mnist", "test", str(MNIST_DIR))
    a, b = vitscope.load(P7), vitscope.load(FT)
    res = compare(a, b, str(DIGIT), tmp_path, dataset=ds, limit=6)
    with np.load(tmp_path / "compare.npz") as z:
        js, n = z["head_js"], int(z["head_js_n"])
    assert n == 6
    want, right = [], [0, 0]
    for i in range(6):  # one image at a time, through the files' own path
        img = tmp_path / f"d{i}.png"
        from PIL import Image

        Image.fromarray(ds.image(i)).save(img)
        ta, tb = vitscope.trace(a, str(img)), vitscope.trace(b, str(img))
        want.append([[jensenshannon(ta.attn[l, h, 0].numpy(), tb.attn[l, h, 0].numpy(), base=2) for h in range(4)]
                     for l in range(4)])
        right[0] += int(ta.logits.argmax()) == int(ds.labels[i])
        right[1] += int(tb.logits.argmax()) == int(ds.labels[i])
    np.testing.assert_allclose(js, np.mean(want, 0), atol=1e-5)
    assert res["accuracy"]["a"] == right[0] / 6 and res["accuracy"]["b"] == right[1] / 6


# -- the split view ---------------------------------------------------------------------------------------
def _sync(coro_fn):
    import asyncio
    import functools

    @functools.wraps(coro_fn)
    def run(*a, **k):
        return asyncio.run(coro_fn(*a, **k))
    return run


def _app(a, b, image):
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.compare import CompareScreen

    return InspectorApp(Options(model="", image=""), start=CompareScreen(str(a), str(b), str(image)))


@_sync
async def test_split_view_keys_move_both_sides_and_head_js_is_scipys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from tui_helpers import settle, wait_for

    app = _app(P7, FT, DIGIT)
    async with app.run_test(size=(160, 48)) as pilot:
        scr = app.screen
        await wait_for(pilot, lambda: scr.ready)
        await settle(pilot)
        await pilot.press("j", "a", "l")  # layer 1; a leaves the mean for head 0; l: head 1 (on both)
        await settle(pilot)
        assert scr.state.layer == 1 and scr.state.head == 1
        for side in "ab":
            assert "layer 1, head 1" in scr.query_one(f"#title-{side}").text
        a, b = (vitscope.trace(vitscope.load(m), str(DIGIT)) for m in (P7, FT))
        want = jensenshannon(a.attn[1, 1, 0].numpy(), b.attn[1, 1, 0].numpy(), base=2)
        assert f"[{want:.3f}]" in str(scr.query_one("#js-grid").render())  # the selected cell, bracketed
        assert "B finetuned from A (sha256)" in scr.query_one("#topbar").text
        np.testing.assert_array_equal(scr.query_one("#pic-a")._image,  # what the inspector draws for A
                                      scr.sessions[0].picture(scr.side_state(0)[0], scr._pic_size("a", a.image)))
        await pilot.press("r")
        await settle(pilot)
        assert all("rollout" in scr.query_one(f"#title-{s}").text.lower() for s in "ab")
        await pilot.press("d")
        await settle(pilot)
        await pilot.pause(0.2)
        assert scr.query_one("#side-d").display and "on the patch grid" in scr.query_one("#title-d").text
        await pilot.press("s", "s")  # twice: the second never overwrites the first
        await pilot.pause(0.2)
        saved = sorted(p.name for p in tmp_path.glob("vitscope-compare-*.png"))
        assert saved == ["vitscope-compare-rollout-L1-h1-1.png", "vitscope-compare-rollout-L1-h1.png"]
        from PIL import Image

        assert Image.open(tmp_path / saved[1]).size[0] > 3 * 160  # A, B and B - A side by side


@_sync
async def test_split_view_cnn_side_falls_back_to_gradcam_and_says_so():
    from tui_helpers import settle, wait_for

    app = _app(P7, CNN, BOOT)
    async with app.run_test(size=(80, 24)) as pilot:
        scr = app.screen
        await wait_for(pilot, lambda: scr.ready)
        await settle(pilot)
        assert "no attention: Grad-CAM shown" in scr.query_one("#scale-b").text
        assert not scr.query_one("#js-grid").display  # no per-head change between a ViT and a CNN
        await pilot.press("g")
        await wait_for(pilot, lambda: "Grad-CAM" in scr.query_one("#title-a").text)
        await settle(pilot)
        assert "Grad-CAM shown" not in scr.query_one("#scale-b").text  # both show it now: nothing to say


@_sync
async def test_M_in_the_inspector_adds_a_second_model(tmp_path):
    from vitscope.tui.modals import OpenImage
    from vitscope.tui.screens.compare import CompareScreen
    from vitscope.views import Session

    from tui_helpers import make_app, settle, wait_for

    session = Session.open(vitscope.load(P7), BOOT)
    app = make_app(session, token="1,2")  # the inspector's query: patch (1, 2) of A's 4x4 grid
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await pilot.press("j")  # layer 1
        await settle(pilot)
        await pilot.press("M")
        await pilot.pause(0.2)
        assert isinstance(app.screen, OpenImage)
        app.screen.query_one("Input").value = str(P4)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.ready)
        scr = app.screen
        await settle(pilot)
        assert scr.sessions[1].spec.layout.grid == (7, 7) and "7 layers" not in scr.query_one("#scale-b").text
        assert scr.state.layer == 1 and scr.state.token == 1 + 1 * 4 + 2  # the inspector's view came along
        ss, note = scr.side_state(1)  # centre of A's patch (1, 2) = pixel (10.5, 17.5) of 28 -> B's (2, 4)
        assert ss.token == 1 + 2 * 7 + 4 and "mapped to (2, 4)" in note
        assert "query patch (2, 4)" in scr.query_one("#title-b").text
        await pilot.press("escape")  # back to the inspector
        await pilot.pause(0.2)
        assert not isinstance(app.screen, CompareScreen)


@_sync
async def test_split_view_layer_charts_and_faithfulness_table():
    from tui_helpers import settle, wait_for

    app = _app(P7, P4, BOOT)
    async with app.run_test(size=(160, 48)) as pilot:
        scr = app.screen
        await wait_for(pilot, lambda: scr.ready)
        await settle(pilot)
        await pilot.press("L")
        await settle(pilot)
        assert scr.query_one("#cmp-charts").display
        ent = scr.query_one("#chart-entropy")._series
        dist = scr.query_one("#chart-distance")._series
        for i, model in enumerate((P7, P4)):  # entropy of the CLS row over all tokens, by hand
            tr = vitscope.trace(vitscope.load(model), str(BOOT))
            rows = tr.attn[:, :, 0, :].double().numpy()
            want = -(rows * np.log(np.maximum(rows, 1e-30))).sum(-1).mean(1)
            np.testing.assert_allclose(ent[i][2], want, rtol=1e-4)
        assert dist[0][0] == "A" and max(dist[1][2]) > 1  # in pixels, not patches
        await pilot.press("f")
        await wait_for(pilot, lambda: "ins - del" in str(scr.query_one("#faith").render()), 120)
        text = str(scr.query_one("#faith").render())
        lines = [ln for ln in text.splitlines()[2:] if ln.strip()]
        scores = [float(ln.split()[-1]) for ln in lines]
        assert scores == sorted(scores, reverse=True) and {ln.split()[0] for ln in lines} == {"A", "B"}
        assert any("random (baseline)" in ln for ln in lines)


@_sync
async def test_split_view_averages_head_js_over_a_dataset(tmp_path):
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.compare import CompareScreen

    from tui_helpers import settle, wait_for

    ds = get_dataset("mnist", "test", str(MNIST_DIR))
    compare(vitscope.load(P7), vitscope.load(FT), str(DIGIT), tmp_path, dataset=ds, limit=6)  # headless, checked
    with np.load(tmp_path / "compare.npz") as z:  # against loops in test_dataset_mean_head_js_and_accuracies
        want = z["head_js"]
    acc = json.loads((tmp_path / "compare.json").read_text())["accuracy"]
    app = InspectorApp(Options(model="", image=""), start=CompareScreen(str(P7), str(FT), str(DIGIT), dataset=ds,
                                                                      limit=6))
    async with app.run_test(size=(160, 48)) as pilot:
        scr = app.screen
        await wait_for(pilot, lambda: scr.ready)
        await settle(pilot)
        np.testing.assert_allclose(scr.head_js, want, atol=1e-6)
        grid = str(scr.query_one("#js-grid").render())
        assert f"mean over 6 images of mnist test; accuracy A {acc['a']:.1%}, B {acc['b']:.1%}" in grid


@_sync
async def test_split_view_head_js_follows_the_query_token():
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.compare import CompareScreen
    from vitscope.views import ViewState

    from tui_helpers import settle, wait_for

    tok = 1 + 1 * 4 + 1  # patch (1, 1)
    app = InspectorApp(Options(model="", image=""), start=CompareScreen(str(P7), str(FT), str(DIGIT),
                                                                      state=ViewState(token=tok)))
    async with app.run_test(size=(160, 48)) as pilot:
        scr = app.screen
        await wait_for(pilot, lambda: scr.ready)
        await settle(pilot)
        a, b = (vitscope.trace(vitscope.load(m), str(DIGIT)) for m in (P7, FT))
        want = np.array([[jensenshannon(a.attn[l, h, tok].numpy(), b.attn[l, h, tok].numpy(), base=2)
                          for h in range(4)] for l in range(4)])
        np.testing.assert_allclose(scr._js_cache[tok], want, atol=1e-6)
        grid = str(scr.query_one("#js-grid").render())
        assert "the rows of patch (1, 1)" in grid and f"mean {want.mean():.3f}" in grid


def test_split_view_help_offers_no_keys_it_does_not_have():
    """The rollout's help in the inspector lists f fusion, d/D discard and </> start layer; in the split view d
    is B - A, f faithfulness and the others do nothing, so its help there says they are the inspector's."""
    from vitscope.tui.screens.compare import CompareScreen
    from vitscope.views.panes import PANES

    tips = {b.key: b.tooltip for b in CompareScreen.BINDINGS}
    assert "d/D discard" in PANES["rollout"].help_with_keys and "d/D discard" not in tips["r"]
    assert tips["r"].startswith("attention rollout of the query token") and "work in the inspector only" in tips["r"]
    assert "B - A" in tips["d"] or "B − A" in tips["d"], tips["d"]  # what d does here
