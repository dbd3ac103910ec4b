"""The trace cache: a model and image inspected before reopen at once, before torch is imported."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import vitscope
from vitscope import trace_cache
from vitscope.views import Session, ViewState

from conftest import ROOT
from tui_helpers import IMAGE, MODEL, SANDAL


def test_key_covers_model_image_options_and_skips_random_init(tmp_path):
    k = trace_cache.cache_key(str(MODEL), IMAGE, {})
    assert k and k == trace_cache.cache_key(str(MODEL), IMAGE, {"heads": None})
    assert k != trace_cache.cache_key(str(MODEL), SANDAL, {})
    assert k != trace_cache.cache_key(str(MODEL), IMAGE, {"heads": 4})
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(MODEL.read_bytes())
    k2 = trace_cache.cache_key(str(copy), IMAGE, {})
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))  # rewritten: a new key
    assert k2 != trace_cache.cache_key(str(copy), IMAGE, {})
    assert trace_cache.cache_key("timm:vit_tiny_patch16_224", IMAGE, {}) is None  # random weights
    assert trace_cache.cache_key("timm:vit_tiny_patch16_224", IMAGE, {"pretrained": True})


def test_round_trip_within_float16_and_same_views(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path))
    se = Session.open(vitscope.load(MODEL), IMAGE)
    key = trace_cache.cache_key(str(MODEL), IMAGE, {})
    norms = [se.token_norms(i) for i in range(se.spec.num_layers)]
    path = trace_cache.store(key, se.spec, se.trace, norms)
    cached = Session.from_cache(path, IMAGE)
    assert cached.from_cached_trace and cached.spec == se.spec
    err = np.abs(cached.trace.attn - se.trace.attn.numpy()) / np.maximum(se.trace.attn.numpy(), 1e-3)
    assert err.max() <= 2 ** -11 * 1.01  # float16: the stated bound
    for pane in ("attention", "rollout", "overview", "norms"):
        a, b = se.output(ViewState(pane=pane, layer=2, token=7)), cached.output(ViewState(pane=pane, layer=2, token=7))
        if a.grid is not None:
            assert np.allclose(a.grid, b.grid, rtol=2e-3, atol=1e-4)
    assert [t[0] for t in cached.top_k(3)] == [t[0] for t in se.top_k(3)]
    assert np.allclose([t[2] for t in cached.top_k(3)], [t[2] for t in se.top_k(3)], atol=1e-6)
    reason = cached.pane_for(ViewState(pane="gradcam")).unavailable(cached)
    assert reason and "still loading" in reason  # slow panes wait for the model
    (tmp_path / "traces" / f"{key}.npz").write_bytes(b"garbage")
    assert Session.from_cache(tmp_path / "traces" / f"{key}.npz", IMAGE) is None  # damaged: recomputed


def test_reopen_draws_before_torch_is_imported(tmp_path):
    """In a fresh process: the first picture comes from the cache with torch not yet imported, then the
    model loads and the exact session replaces it."""
    env = dict(os.environ, VITSCOPE_CACHE=str(tmp_path))
    script = textwrap.dedent(f"""
        import asyncio, sys
        from vitscope.tui.app import InspectorApp, Options
        async def main():
            app = InspectorApp(Options(model={str(MODEL)!r}, image={str(IMAGE)!r}))
            async with app.run_test(size=(120, 36)) as pilot:
                for _ in range(1200):
                    await pilot.pause(0.05)
                    s = app.inspector.session
                    if s is not None and not s.from_cached_trace:
                        break
                t = app.inspector.timings
                print("cached" if "first_picture" in t and t["torch_before_first_picture"] == 0 else "not-cached",
                      s is not None and not s.from_cached_trace, t["first_picture"] - t["start"])
        asyncio.run(main())
    """)
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[0] == "not-cached" and list((tmp_path / "traces").glob("*.npz"))
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=120)
    assert second.returncode == 0, second.stderr
    kind, exact, seconds = second.stdout.split()
    assert kind == "cached" and exact == "True"
    print(f"reopen: first picture {float(seconds):.2f}s after the screen started (Pilot, torch not imported)")


def test_a_gradient_pane_asked_for_while_the_model_loads_waits_then_shows(tmp_path, monkeypatch):
    import asyncio

    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.messages import SessionReady
    from tui_helpers import settle, text

    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path))
    real = Session.open(vitscope.load(MODEL), IMAGE)
    key = trace_cache.cache_key(str(MODEL), IMAGE, {})
    path = trace_cache.store(key, real.spec, real.trace, [real.token_norms(i) for i in range(4)])
    cached = Session.from_cache(path, IMAGE)
    from vitscope.tui.screens.inspector import InspectorScreen

    loads = []
    monkeypatch.setattr(InspectorScreen, "open_session", lambda self, *a: loads.append(a))  # the test plays the loader

    async def run():
        app = InspectorApp(Options(model=str(MODEL), image=str(IMAGE), trace_cache=False), session=cached)
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press("g")
            await pilot.pause()
            assert scr.state.pane == "gradcam"
            assert "waits for the model" in text(app, "#status") and loads  # the model load was started
            scr.post_message(SessionReady(real))  # the model has loaded
            await settle(pilot)
            assert scr.session is real and "Grad-CAM" in text(app, "#view-title")
            assert "waiting" not in text(app, "#view-title")

    asyncio.run(run())
