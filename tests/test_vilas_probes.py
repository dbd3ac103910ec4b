"""Linear probes per block beside the class projection (Vilas et al. 2023, section 5) and the projection-curves
screen: the probes against scikit-learn on the same features, the block outputs against hooks of our own, the
screen driven with Pilot."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from vitscope.analysis.linear_probes import (BlockFeatures, Standardiser, block_probes, fit_logistic, fit_ridge,
                                             probe_accuracy, probe_split)

from conftest import MNIST_DIR, MNIST_LABEL_COUNTS, ROOT, run_cli

DIGITS = ROOT / "samples" / "digits-vit.safetensors"


def _blobs(n: int, d: int, k: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(k, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return centres[y] + spread * torch.randn(n, d, generator=g) + 5.0, y  # offset: the intercept matters


def test_logistic_probe_is_sklearns_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _blobs(400, 12, 5, spread=4.0, seed=1)  # overlapping: the L2 term shapes the optimum
    tr, te = slice(0, 250), slice(250, None)
    x64 = x.double().numpy()  # sklearn fits in the features' dtype: float64 for an exact comparison
    scale = StandardScaler().fit(x64[tr])
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(scale.transform(x64[tr]), y[tr].numpy())
    w, b = fit_logistic(Standardiser.fit(x[tr])(x[tr]), y[tr], 5)
    assert np.allclose(w.numpy(), ref.coef_, atol=1e-4) and np.allclose(b.numpy(), ref.intercept_, atol=1e-4)
    want = float((ref.predict(scale.transform(x64[te])) == y[te].numpy()).mean())
    assert probe_accuracy(x[tr], y[tr], x[te], y[te], 5) == pytest.approx(want, abs=1e-12)
    assert 0.4 < want < 1.0  # neither trivial nor hopeless


def test_ridge_probe_is_the_authors_sklearn_ridge():
    from sklearn.linear_model import Ridge

    x, y = _blobs(300, 10, 4, spread=3.0, seed=2)
    t = -np.ones((300, 4))
    t[np.arange(300), y.numpy()] = 1  # the authors' targets: +1 for the label, -1 elsewhere
    ref = Ridge(alpha=1.0).fit(x.numpy().astype(np.float64), t)
    w, b = fit_ridge(x, y, 4)
    assert np.allclose(w.numpy(), ref.coef_, atol=1e-8) and np.allclose(b.numpy(), ref.intercept_, atol=1e-8)
    acc = probe_accuracy(x[:200], y[:200], x[200:], y[200:], 4, "ridge")
    want = float((Ridge(alpha=1.0).fit(x[:200].numpy().astype(np.float64), t[:200]).predict(
        x[200:].numpy().astype(np.float64)).argmax(1) == y[200:].numpy()).mean())
    assert acc == pytest.approx(want, abs=1e-12)


def test_probe_split_is_stratified_and_few_shot_keeps_the_test_images():
    labels = np.repeat(np.arange(4), [10, 21, 7, 30])
    train, test = probe_split(labels, seed=3)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert [int((labels[train] == c).sum()) for c in range(4)] == [5, 10, 4, 15]  # round(half) of each class
    few_train, few_test = probe_split(labels, shots=2, seed=3)
    assert np.array_equal(few_test, test) and set(few_train) <= set(train)
    assert [int((labels[few_train] == c).sum()) for c in range(4)] == [2, 2, 2, 2]


def test_block_probes_on_data_where_the_answer_is_known(tmp_path):
    """Block 0 holds noise, block 1 the label one-hot (plus noise): the probe is at chance, then perfect; the
    projection (here the identity) is perfect at block 1 as well, and at chance at block 0."""
    n, k, d = 400, 4, 8
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % k
    noise = torch.randn(2, n, d, generator=g)
    signal = torch.zeros(n, d)
    signal[torch.arange(n), y] = 3.0
    with BlockFeatures(2, n, d, has_cls=True, directory=tmp_path) as f:
        for i in range(0, n, 64):  # written batch by batch, as the sweep does
            blocks = torch.stack([noise[0, i:i + 64], signal[i:i + 64] + 0.1 * noise[1, i:i + 64]])
            f.write(blocks, blocks * 0, y[i:i + 64])
        assert len(list(tmp_path.iterdir())) == 1  # the memory-mapped files live in one temporary folder
        got = block_probes(f, k, lambda h: h[:, :k])
    assert not list(tmp_path.iterdir())  # removed when done
    assert got["n_train"] == got["n_test"] == 200 and got["tokens"] == ["cls", "image_mean"]
    assert got["cls_probe_accuracy"][1] == 1.0 and got["cls_projection_accuracy"][1] == 1.0
    assert got["cls_probe_accuracy"][0] < 0.45 and got["cls_projection_accuracy"][0] < 0.45


def _block_outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for blk in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.fixture(scope="module")
def digits_curves():
    """A real projection sweep with probes: the digits sample on the 300 MNIST images of tests/data."""
    import vitscope
    from vitscope.data.datasets import get_dataset
    from vitscope.sweep import projection_sweep

    loaded = vitscope.load(str(DIGITS))
    ds = get_dataset("mnist", "test", str(MNIST_DIR))
    return loaded, ds, projection_sweep(loaded, ds, batch_size=128, random_limit=100, probes=True, probe_shots=10)


def test_sweep_probes_against_sklearn_on_hooked_block_outputs(digits_curves):
    """Every block's CLS probe and projection accuracy, recomputed from forward hooks on timm's blocks and
    scikit-learn's logistic regression on the same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from vitscope.data.datasets import iterate_batches

    loaded, ds, curves = digits_curves
    q = curves["probes"]
    assert q["shots"] == 10 and q["n_train"] == 100 and q["n_test"] == 300 - sum(round(c / 2) for c in MNIST_LABEL_COUNTS)
    xs, ys = zip(*[(x, y) for x, y, _ in iterate_batches(ds, 128, loaded.spec.data_config, torch.arange(len(ds)))])
    x, y = torch.cat(xs), torch.cat(ys).numpy()
    train, test = probe_split(y, shots=10)
    model = loaded.model
    for b, h in enumerate(_block_outputs(model, x)):
        cls = h[:, 0].numpy().astype(np.float64)
        scale = StandardScaler().fit(cls[train])
        ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(scale.transform(cls[train]), y[train])
        assert q["cls_probe_accuracy"][b] == pytest.approx((ref.predict(scale.transform(cls[test])) == y[test]).mean(),
                                                           abs=1.5 / len(test)), b  # at most one image apart
        with torch.no_grad():
            proj = model.head(model.norm(h[:, 0]))[test].argmax(-1).numpy()
        assert q["cls_projection_accuracy"][b] == pytest.approx((proj == y[test]).mean(), abs=1e-9), b
    # the model's own output: the last block's projection of CLS is its prediction
    assert q["cls_projection_accuracy"][-1] == pytest.approx(
        (model(x)[test].argmax(-1).numpy() == y[test]).mean(), abs=1e-9)


@pytest.mark.slow
def test_sweep_probes_from_the_cli():
    r = run_cli("sweep", str(DIGITS), "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--projections", "--probes",
                "--probe-shots", "5", "--probe-kind", "ridge", "--random-limit", "20", "--json", "--no-cache")
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)["projections"]["probes"]
    assert q["kind"] == "ridge" and q["shots"] == 5 and q["n_train"] == 50 and q["tokens"] == ["cls", "image_mean"]
    assert len(q["cls_probe_accuracy"]) == len(q["image_mean_projection_accuracy"]) == 4
    assert q["cls_probe_accuracy"][-1] > 0.5  # five digits a class suffice at the last block
    for args in (["--projections", "--probes", "--probe-shots", "0"], ["--probes"]):
        bad = run_cli("sweep", str(DIGITS), "--dataset", "mnist", "--data-dir", str(MNIST_DIR), *args)
        assert bad.returncode == 2 and "--probe" in bad.stderr and "Traceback" not in bad.stderr


# -- the projection-curves screen --------------------------------------------------------------------
def _curves_app(curves):
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.projection_curves import ProjectionCurvesScreen

    return InspectorApp(Options(model="", image=""), start=ProjectionCurvesScreen(curves, "digits-vit on mnist test"))


def test_curves_screen_shows_titles_and_the_last_blocks_numbers(digits_curves):
    asyncio.run(_curves_screen(digits_curves[2]))


async def _curves_screen(curves) -> None:
    from vitscope.tui.widgets.curves import Curves

    app = _curves_app(curves)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        scr = app.screen
        assert "digits-vit on mnist test" in str(scr.query_one("#pc-title").render())
        last = str(scr.query_one("#pc-last").render())
        m, q = curves["model"], curves["probes"]
        assert last.startswith("block 3:")
        assert f"CLS id {m['cls_identifiability'][3]:.2f} (random {curves['random_init']['cls_identifiability'][3]:.2f})" in last
        assert f"CLS probe {q['cls_probe_accuracy'][3]:.2f} / projection {q['cls_projection_accuracy'][3]:.2f}" in last
        charts = {c.id: c for c in scr.query(Curves)}
        assert set(charts) == {"pc-ident", "pc-r", "pc-rates", "pc-match", "pc-probes"}
        assert charts["pc-ident"].title.startswith("identifiability") and charts["pc-ident"].points == 16  # 4 series x 4
        assert "10-shot" in charts["pc-probes"].title
        assert "identifiability" in charts["pc-ident"].render().plain  # drawn, with its title
        await pilot.press("v")
        await pilot.pause()
        table = str(scr.query_one("#pc-table-text").render())
        assert scr.query_one("#pc-table").display and not scr.query_one("#pc-charts").display
        assert f"{m['mlp_update_rate'][3]:>8.2f} /" in table.splitlines()[5]  # block 3's row
        await pilot.press("escape")  # alone on the app: leaves
        await pilot.pause()
    assert app.return_code in (0, None)
    app = _curves_app(curves)
    async with app.run_test(size=(80, 24)) as pilot:  # narrow: one chart at a time, `c` for the next
        await pilot.pause()
        shown = lambda: [c.id for c in app.screen.query(Curves) if c.display]  # noqa: E731
        assert shown() == ["pc-ident"]
        await pilot.press("c")
        await pilot.pause()
        assert shown() == ["pc-r"]


@pytest.mark.slow
def test_browser_opens_the_kept_curves_with_V():
    """`sweep --projections` keeps the curves beside the split's sweep; `V` in the browser opens them."""
    asyncio.run(_browser_V())


async def _browser_V() -> None:
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.browser import BrowserOptions
    from vitscope.tui.screens.projection_curves import ProjectionCurvesScreen

    from tui_helpers import wait_for

    r = run_cli("sweep", str(DIGITS), "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--projections",
                "--random-limit", "20")
    assert r.returncode == 0, r.stderr
    model = str(DIGITS)
    app = InspectorApp(Options(model=model, image="", browse=BrowserOptions(model=model, dataset="mnist",
                                                                             data_dir=str(MNIST_DIR))))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "final", False))
        await pilot.press("V")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, ProjectionCurvesScreen))
        assert "digits-vit.safetensors on mnist test" in str(pilot.app.screen.query_one("#pc-title").render())
        assert "pc-probes" not in {c.id for c in pilot.app.screen.query("Curves")}  # this sweep ran no probes
        await pilot.press("b")
        await wait_for(pilot, lambda: hasattr(pilot.app.screen, "final"))  # back in the browser
