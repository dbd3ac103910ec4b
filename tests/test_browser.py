"""The misclassification browser: its view model against plain Python, the sweep's cache and partial
results, and the screen driven with Pilot on the 300 MNIST test images shipped in tests/data."""
from __future__ import annotations

import asyncio
import os
import shutil
import threading

import numpy as np
import pytest

import vitscope
from vitscope.analysis.hooks import Cancelled, cancel_when
from vitscope.browse import COLUMN_KEYS, LISTS, Browse, BrowseState
from vitscope.data.datasets import get_dataset
from vitscope.sweep import SweepResult, cache_dir, run_sweep

from conftest import MNIST_DIR, ROOT, run_cli
from tui_helpers import wait_for

DIGITS = ROOT / "samples" / "digits-vit.safetensors"  # trained on MNIST test images 0-7999 (samples/README.md)


def synthetic(n: int = 400, C: int = 6, seed: int = 0) -> SweepResult:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, C)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    label = rng.integers(0, C, n)
    order = np.argsort(-probs, 1)[:, :5]
    return SweepResult(index=np.arange(n) * 3, label=label, pred=order[:, 0], topk_idx=order,
                       topk_prob=np.take_along_axis(probs, order, 1).astype(np.float32),
                       loss=(-np.log(probs[np.arange(n), label])).astype(np.float32),
                       classes=[f"class{c}" for c in range(C)], probs=probs.astype(np.float32))


def test_browse_lists_filters_and_sorts_match_plain_python():
    r = synthetic()
    b = Browse(r)
    n = r.n
    wrong = [i for i in range(n) if r.pred[i] != r.label[i]]
    # all: mistakes first, each group by loss (highest first), ties in dataset order
    expect = sorted(range(n), key=lambda i: (r.pred[i] == r.label[i], -r.loss[i], i))
    assert b.rows(BrowseState()).tolist() == expect
    assert b.rows(BrowseState(list="mistakes")).tolist() == sorted(wrong, key=lambda i: (-r.p_pred[i], i))
    right = [i for i in range(n) if r.pred[i] == r.label[i]]
    assert b.rows(BrowseState(list="unsure")).tolist() == sorted(right, key=lambda i: (r.p_true[i], i))
    assert b.rows(BrowseState(list="loss")).tolist() == sorted(range(n), key=lambda i: (-r.loss[i], i))
    issues = b.issues
    assert b.rows(BrowseState(list="issues")).tolist() == sorted(np.flatnonzero(issues.is_issue).tolist(),
                                                                  key=lambda i: (-issues.score[i], i))
    # p(true) and margin from the probabilities, independently
    for i in range(0, n, 37):
        p = r.probs[i]
        assert r.p_true[i] == pytest.approx(p[r.label[i]])
        assert r.margin[i] == pytest.approx(p[r.label[i]] - np.delete(p, r.label[i]).max())
    # a confusion cell lists exactly its images
    cm = r.confusion()
    i, j = np.unravel_index(np.argmax(cm - np.diag(np.diag(cm))), cm.shape)
    cell = b.rows(BrowseState(list="cell", cell=(int(i), int(j))))
    assert sorted(cell.tolist()) == [k for k in range(n) if r.label[k] == i and r.pred[k] == j]
    assert len(cell) == cm[i, j]
    # filters combine
    s = BrowseState(true_class=2, pred_class=4, wrong_only=True)
    assert sorted(b.rows(s).tolist()) == [k for k in range(n) if r.label[k] == 2 and r.pred[k] == 4]
    # every column sorts both ways; class columns by name
    for key in COLUMN_KEYS:
        col = b._sort_values[key]
        for desc in (False, True):
            got = b.rows(BrowseState(sort=key, descending=desc))
            vals = col[got]
            assert (np.diff(vals.astype(float)) <= 0).all() if desc else (np.diff(vals.astype(float)) >= 0).all()
    assert set(LISTS) >= {"all", "mistakes", "unsure", "loss", "issues", "cell"}


def test_sweep_partials_are_prefixes_and_a_cancelled_sweep_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    loaded = vitscope.load(DIGITS)
    ds = get_dataset("mnist", "test", MNIST_DIR)
    parts = []
    res = run_sweep(loaded, ds, batch_size=40, partial=parts.append, partial_every=0.0)
    assert res.n == 300 and len(parts) >= 5
    for p in parts:
        k = p.n
        assert 0 < k < 300 and np.array_equal(p.pred, res.pred[:k]) and np.allclose(p.probs, res.probs[:k])
    assert np.allclose(res.probs.sum(1), 1, atol=1e-5)
    assert np.allclose(res.p_true, res.probs[np.arange(300), res.label])
    cached = list(cache_dir().glob("*.npz"))
    assert len(cached) == 1
    again = run_sweep(loaded, ds, batch_size=40)
    assert again.cached and np.array_equal(again.probs, res.probs) and again.meta["dataset"] == "mnist"
    cached[0].unlink()
    # cancelled after two batches (as the browser's x or quit does): nothing cached that reads as complete
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 2:
            raise Cancelled()

    with cancel_when(check), pytest.raises(Cancelled):
        run_sweep(loaded, ds, batch_size=40)
    assert not list(cache_dir().glob("*.npz"))


def test_sweep_cache_key_follows_data_files_and_preprocessing(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    loaded = vitscope.load(DIGITS)
    first = run_sweep(loaded, get_dataset("mnist", "test", MNIST_DIR), batch_size=100)
    copy = tmp_path / "mnist"
    shutil.copytree(MNIST_DIR, copy)
    other = run_sweep(loaded, get_dataset("mnist", "test", copy), batch_size=100)
    assert not other.cached and other.key != first.key  # other files
    labels = copy / "t10k-labels-idx1-ubyte.gz"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    assert run_sweep(loaded, get_dataset("mnist", "test", copy), batch_size=100).key != other.key  # changed file
    loaded.spec.data_config = dict(loaded.spec.data_config, mean=[0.5], std=[0.5])
    changed = run_sweep(loaded, get_dataset("mnist", "test", MNIST_DIR), batch_size=100)
    assert not changed.cached and changed.key != first.key  # other preprocessing


def test_two_sweeps_writing_the_cache_at_once_leave_one_valid_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    ds = get_dataset("mnist", "test", MNIST_DIR)
    models = [vitscope.load(DIGITS), vitscope.load(DIGITS)]  # two copies: two locks, truly concurrent
    out, errors = [], []

    def go(m):
        try:
            out.append(run_sweep(m, ds, batch_size=30, use_cache=True))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 2
    files = list(cache_dir().glob("*"))
    assert [f.suffix for f in files] == [".npz"]  # no temporary file left
    assert np.array_equal(SweepResult.from_npz(files[0]).pred, out[0].pred)


def test_cli_sweep_label_issues_json():
    r = run_cli("sweep", str(DIGITS), "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--label-issues", "--json")
    assert r.returncode == 0, r.stderr
    import json

    d = json.loads(r.stdout)
    assert d["out_of_sample"] is False and "crossval" in d["label_issues_warning"]  # trained on these images
    for row in d["label_issues"]:
        assert set(row) == {"index", "given", "suggested", "score"} and row["given"] != row["suggested"]
    scores = [row["score"] for row in d["label_issues"]]
    assert scores == sorted(scores, reverse=True) and d["label_issue_count"] == len(scores)


def test_cli_inspect_bad_browser_arguments_fail_before_a_screen():
    r = run_cli("inspect", str(DIGITS))
    assert r.returncode == 2 and "IMAGE is missing" in r.stderr and "--dataset" in r.stderr
    r = run_cli("inspect", str(DIGITS), "--dataset", "imagenet")
    assert r.returncode == 2 and "unknown dataset 'imagenet'" in r.stderr
    r = run_cli("inspect", str(DIGITS), "--dataset", "mnist", "--data-dir", str(ROOT / "samples"))
    assert r.returncode == 2 and "t10k-images-idx3-ubyte" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("inspect", str(DIGITS), "--dataset", f"folder:{ROOT / 'nowhere'}")
    assert r.returncode == 2 and "image folder not found" in r.stderr


# -- the screen --------------------------------------------------------------------------------------
SIZE = (150, 44)


def browser_app(**kw):
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.browser import BrowserOptions

    b = BrowserOptions(model=str(DIGITS), dataset="mnist", data_dir=str(MNIST_DIR), **kw)
    return InspectorApp(Options(model=str(DIGITS), image="", browse=b))


def listed(screen) -> list[int]:
    """The dataset indices of the listed rows, in display order."""
    r = screen.browse.result
    return r.index[screen.rows].tolist()


def test_browser_table_sorts_filters_confusion_and_round_trip_through_the_inspector(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    from vitscope.tui.modals import ClassPicker
    from vitscope.tui.screens.browser import BrowserScreen
    from vitscope.tui.screens.inspector import InspectorScreen
    from vitscope.tui.widgets.rowtable import RowTable

    ds = get_dataset("mnist", "test", MNIST_DIR)

    async def run():
        app = browser_app()
        async with app.run_test(size=SIZE) as pilot:
            scr = app.screen
            assert isinstance(scr, BrowserScreen)
            await wait_for(pilot, lambda: scr.final)
            await pilot.pause()
            r = scr.browse.result
            assert r.n == 300 and not r.cached
            table = scr.query_one(RowTable)
            assert table.n == 300
            # what a person sees: the header, then the first (wrong) row with its classes and numbers
            first = int(scr.rows[0])
            line = table._text(table._cells(0))
            assert str(int(r.index[first])) in line and r.classes[int(r.pred[first])] in line
            wrong = int((~r.correct).sum())
            assert wrong >= 1 and all(not r.correct[p] for p in scr.rows[:wrong])
            top = str(scr.query_one("#topbar").render())
            assert "300 images" in top and f"{r.accuracy:.2%}" in top
            # sort by p(true) (column 5): ascending first, again reverses
            await pilot.press("5")
            assert scr.state.sort == "p_true" and (np.diff(r.p_true[scr.rows]) >= 0).all()
            await pilot.press("5")
            assert (np.diff(r.p_true[scr.rows]) <= 0).all()
            # filter by true class through the picker: only that class is listed
            await pilot.press("t")
            assert isinstance(app.screen, ClassPicker)
            await pilot.press("7", "enter")
            await pilot.pause()
            assert scr.state.true_class == 7 and len(scr.rows) == int((r.label == 7).sum())
            assert (r.label[scr.rows] == 7).all()
            await pilot.press("backspace")
            assert len(scr.rows) == 300
            # the confusion matrix: move to the most frequent mistake, Enter lists exactly its images
            cm = r.confusion()
            off = cm - np.diag(np.diag(cm))
            i, j = (int(v) for v in np.unravel_index(np.argmax(off), off.shape))
            await pilot.press("c")
            for _ in range(i):
                await pilot.press("j")
            for _ in range(j):
                await pilot.press("l")
            await pilot.press("enter")
            await pilot.pause()
            assert scr.state.list == "cell"
            assert sorted(listed(scr)) == [k for k in range(300) if ds.labels[k] == i and r.pred[k] == j]
            assert "true " + r.classes[i] in str(scr.query_one("#list-title").render())
            await pilot.press("escape")
            assert scr.state.list == "all"
            # the most confident mistakes; Enter on the second row opens it with the TRUE class as target
            await pilot.press("m")
            await pilot.press("j")
            pos = scr.current_position()
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, InspectorScreen) and app.screen.session is not None)
            await pilot.pause()
            ins = app.screen
            idx = int(r.index[pos])
            assert ins.session.image_path == f"mnist-test-{idx}"
            assert np.array_equal(ins.session.image[..., 0], np.asarray(ds.image(idx)))  # the very image
            assert ins.state.target == int(ds.labels[idx])
            assert ins.session.target_of(ins.state) == int(r.label[pos])
            top = str(ins.query_one("#topbar").render())
            assert "target: TRUE class" in top and f"true {r.classes[int(r.label[pos])]}" in top
            # the inspector's own prediction is the sweep's
            assert ins.session.prediction == int(r.pred[pos])
            await pilot.press("P")
            assert ins.state.target is None and "PREDICTED" in str(ins.query_one("#topbar").render())
            await pilot.press("P")
            # ] steps to the next image of the list
            nxt = int(scr.rows[2])
            await pilot.press("right_square_bracket")
            await wait_for(pilot, lambda: ins.session.image_path == f"mnist-test-{int(r.index[nxt])}")
            await pilot.pause()
            assert ins.state.target == int(r.label[nxt])
            # b returns to the browser on the row of the image shown
            await pilot.press("b")
            await pilot.pause()
            assert app.screen is scr and scr.current_position() == nxt and table.cursor == 2
        return app

    app = asyncio.run(run())
    assert app.error is None


def test_browser_opens_a_cached_sweep_at_once_and_shows_the_thumbnail(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    from vitscope.tui.widgets import HalfCellImage

    run_sweep(vitscope.load(DIGITS), get_dataset("mnist", "test", MNIST_DIR), batch_size=100)

    async def run():
        app = browser_app()
        async with app.run_test(size=(100, 30)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.final)
            assert scr.browse.result.cached and "cached sweep" in str(scr.query_one("#topbar").render())
            await wait_for(pilot, lambda: "for the predicted class" in str(scr.query_one("#thumb-title").render()))
            pic = scr.query_one("#thumb", HalfCellImage)._image
            plain = np.asarray(scr.item(scr.current_position()).image.pil().convert("RGB"))
            assert pic is not None and pic.shape[0] % 28 == 0 and pic.std() > 0
            assert not np.array_equal(pic[::pic.shape[0] // 28, ::pic.shape[1] // 28], plain)  # the map over it

    asyncio.run(run())


def test_saved_list_is_csv_of_the_listed_rows():
    import csv
    import io

    r = synthetic(n=50)
    r.classes[2] = 'T-shirt, "top"'  # a comma and quotes survive the round trip
    b = Browse(r)
    rows = b.rows(BrowseState(list="mistakes"))
    got = list(csv.DictReader(io.StringIO(b.to_csv(rows))))
    assert [int(g["index"]) for g in got] == r.index[rows].tolist()
    assert [g["true"] for g in got] == [r.classes[int(v)] for v in r.label[rows]]
    assert all(g["correct"] == "false" for g in got) and set(got[0]) >= {"p_true", "loss", "issue", "suggested"}


def test_browser_under_no_color_draws_table_and_confusion(tmp_path, monkeypatch):
    """NO_COLOR (Textual's monochrome filter reads every segment's style): the table, the side panel and
    the confusion matrix draw without error (it crashed on an unstyled padding segment)."""
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")

    async def run():
        app = browser_app()
        async with app.run_test(size=(80, 24)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.final)
            await pilot.press("j", "c", "j", "l")
            await pilot.pause(0.3)
            svg = app.export_screenshot()
            assert "pred" in svg and "true" in svg
        return app

    app = asyncio.run(run())
    assert app.error is None and app.return_code in (None, 0)
