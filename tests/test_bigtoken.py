"""Big-token models: a trace that keeps only the attention digest shows the same numbers as one that keeps
every layer's attention; float16 attention within its stated error; `vitscope export --layers --dtype`
and its streamed trace.npz; an export killed half-way or stopped by a full disk leaves no partial output."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vitscope
from vitscope import tracing
from vitscope.analysis.hooks import unfused_attention
from vitscope.errors import VitscopeError
from vitscope.export import ExportSettings, export, export_image, parse_layers
from vitscope.tracing import Capture, trace
from vitscope.views import Session

from conftest import ROOT, randomise, run_cli

IMAGE = str(ROOT / "samples" / "photo_rgb.png")
# a DINOv2-style ViT (CLS + 4 registers, LayerScale) at 64 px with 4 px patches: 261 tokens, 3 layers
DINO_KW = dict(img_size=64, patch_size=4, embed_dim=48, depth=3, num_heads=3, num_classes=5)


@pytest.fixture(scope="module")
def dino_ckpt(tmp_path_factory) -> Path:
    import timm

    from vitscope.loaders.checkpoint import save_checkpoint

    torch.manual_seed(0)
    m = randomise(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, **DINO_KW), seed=1)
    dc = {"input_size": [3, 64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
          "interpolation": "bicubic", "crop_pct": 1.0}
    path = tmp_path_factory.mktemp("dino") / "dino.safetensors"
    return save_checkpoint(path, m, arch="vit_small_patch14_reg4_dinov2", kwargs=DINO_KW,
                           classes=[f"c{i}" for i in range(5)], data_config=dc)


@pytest.fixture(scope="module")
def sessions(dino_ckpt):
    loaded = vitscope.load(str(dino_ckpt))
    assert loaded.spec.layout.num_tokens == 261 and loaded.spec.layout.num_prefix == 5
    full = Session(loaded, trace(loaded, IMAGE, capture=Capture(attention="all")), image_path=IMAGE)
    digest = Session(loaded, trace(loaded, IMAGE, capture=Capture(attention="none")), image_path=IMAGE)
    return full, digest


def test_digest_session_shows_what_full_attention_shows(sessions):
    full, digest = sessions
    assert full.holds_all_attention and full.trace.attn.shape == (3, 3, 261, 261)
    assert not digest.holds_all_attention and digest.trace.attn is None
    lay = full.layout
    for token in (None, lay.patch_token(7, 9), 2):  # CLS, a patch, a register
        for layer in range(3):
            for head in (0, 2, "mean", "max"):
                assert np.allclose(digest.attention_grid(layer, head, token), full.attention_grid(layer, head, token),
                                   atol=1e-6)
                assert np.allclose(digest.prefix_attention(layer, head, token),
                                   full.prefix_attention(layer, head, token), atol=1e-6)
        for k, v in full.head_stats(token).items():
            assert np.allclose(digest.head_stats(token)[k], v, atol=1e-5), k
        for settings in (("mean", 0.0, 0), ("max", 0.2, 1)):
            assert np.allclose(digest.rollout_grid(token, *settings), full.rollout_grid(token, *settings), atol=1e-6)
    # the digest's CLS rows are the captured attention itself (an independent read of the tensor)
    assert np.allclose(digest.trace.digest.rows, full.trace.attn[:, :, 0].numpy(), atol=1e-7)


def test_layer_scale_updates_are_derived_bit_for_bit(sessions):
    """A LayerScale model's trace holds attn_proj / mlp_fc2, not attn_out / mlp_out: those are derived, and
    equal to what ls1 / ls2 really output (read here by hooks of their own), bit for bit."""
    full, _ = sessions
    tr, model = full.trace, full.loaded.model
    assert tr.stream_attn_out is None and tr.stream_mlp_out is None and tr.layer_scale.shape == (2, 3, 48)
    seen: dict[str, list[torch.Tensor]] = {"ls1": [], "ls2": []}
    handles = [getattr(blk, name).register_forward_hook(lambda _m, _i, out, name=name: seen[name].append(out[0]))
               for blk in model.blocks for name in seen]
    try:
        with torch.inference_mode(), unfused_attention(model):
            model(full.input[None])
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(tr.attn_out, torch.stack(seen["ls1"])) and torch.equal(tr.mlp_out, torch.stack(seen["ls2"]))
    assert torch.allclose(tr.resid[1:], tr.resid[:-1] + tr.attn_out + tr.mlp_out, atol=1e-5)


def test_a_digest_trace_makes_the_attention_one_head_at_a_time(sessions, monkeypatch):
    from vitscope.analysis import hooks

    full, _ = sessions
    calls: list[int] = []
    one_head = hooks._attention_one_head_at_a_time
    monkeypatch.setattr(hooks, "_attention_one_head_at_a_time", lambda *a, **k: calls.append(1) or one_head(*a, **k))
    tr = trace(full.loaded, IMAGE, capture=Capture(attention="none"))
    assert len(calls) == 3  # every block, in place of timm's forward (which the full trace ran)
    assert "forward" not in vars(full.loaded.model.blocks[0].attn)  # timm's forward is back
    np.testing.assert_allclose(tr.digest.rows, full.trace.attn[:, :, 0].numpy(), atol=1e-6)
    for name in ("resid", "attn_proj", "mlp_fc2", "logits"):
        assert torch.allclose(getattr(tr, name), getattr(full.trace, name), atol=1e-5), name


def test_float16_attention_is_within_its_stated_error(dino_ckpt, sessions):
    full, _ = sessions
    half = trace(full.loaded, IMAGE, capture=Capture(attention="all", attn_dtype="float16"))
    assert half.attn.dtype == torch.float16
    a32, a16 = full.trace.attn.double(), half.attn.double()
    # float16 rounding: relative 2^-11 for normal numbers, absolute 2^-25 below its smallest normal (2^-14)
    assert ((a16 - a32).abs() <= 2.0 ** -11 * a32.abs() + 2.0 ** -25).all()
    assert (a16 != a32).any()  # the storage really is float16


def test_auto_capture_keeps_the_digest_past_the_budget_and_export_streams_the_same_npz(sessions, monkeypatch,
                                                                                         tmp_path):
    full, _ = sessions
    monkeypatch.setattr(tracing, "FULL_ATTENTION_BYTES", 261 * 261 * 9 * 4 - 1)  # 9 of 3x3 layer-heads fit, not all
    big = Session(full.loaded, trace(full.loaded, IMAGE), image_path=IMAGE)
    assert big.trace.attn is None
    settings = ExportSettings(analyses=False)
    export(full, tmp_path / "full", settings)
    export(big, tmp_path / "big", settings)  # attention from one more pass, written layer by layer
    with np.load(tmp_path / "full" / "trace.npz") as a, np.load(tmp_path / "big" / "trace.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert np.allclose(a["attn"], full.trace.attn.numpy(), atol=1e-7)
        for k in a.files:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            if a[k].dtype.kind == "f":
                assert np.allclose(a[k], b[k], atol=1e-6), k
    assert (tmp_path / "big" / "rollout.png").read_bytes() == (tmp_path / "full" / "rollout.png").read_bytes()


def test_export_layers_and_dtype(dino_ckpt, sessions, tmp_path):
    full, _ = sessions
    r = run_cli("export", str(dino_ckpt), IMAGE, "--out", str(tmp_path / "e"), "--layers", "0,-1", "--dtype",
                "float16", "--no-analyses")
    assert r.returncode == 0, r.stderr
    tr = full.trace
    with np.load(tmp_path / "e" / "trace.npz") as z:
        assert z["layers"].tolist() == [0, 2]
        assert z["attn"].dtype == np.float16 and z["attn"].shape == (2, 3, 261, 261)
        assert np.array_equal(z["attn"], tr.attn[[0, 2]].half().numpy())
        assert np.array_equal(z["resid"], tr.resid[[0, 2, 3]].half().numpy())  # entering 0 and 2, then the final
        assert np.array_equal(z["mlp_out"], tr.mlp_out[[0, 2]].half().numpy())
        assert z["token_norms"].shape[0] == 3  # the pictures and norms still cover every layer
    assert parse_layers("0..1,-1", 3) == (0, 1, 2) and parse_layers("-2", 3) == (1,)
    for bad in ("0,3", "x", "2..1"):
        with pytest.raises(VitscopeError, match="0..2|like 0,5,-1"):
            parse_layers(bad, 3)


def test_export_image_streams_the_attention_during_the_trace(sessions, monkeypatch, tmp_path):
    full, _ = sessions
    passes: list[int] = []
    monkeypatch.setattr(Session, "attention_pass", lambda self, sink: passes.append(1))
    session, _ = export_image(full.loaded, IMAGE, tmp_path / "l", ExportSettings(analyses=False, layers=(0, 2),
                                                                                 dtype="float16"))
    assert session.trace.attn is None  # --layers: the views read the digest; the kept layers are in the file
    monkeypatch.setattr(tracing, "FULL_ATTENTION_BYTES", 0)  # a big-token trace: only the digest
    session, _ = export_image(full.loaded, IMAGE, tmp_path / "e", ExportSettings(analyses=False))
    assert session.trace.attn is None and passes == []  # no second attention pass
    with np.load(tmp_path / "e" / "trace.npz") as z, np.load(tmp_path / "l" / "trace.npz") as zl:
        assert np.array_equal(z["attn"], full.trace.attn.numpy())
        assert np.array_equal(zl["attn"], full.trace.attn[[0, 2]].half().numpy())
        assert np.array_equal(z["attn_out"], full.trace.attn_out.numpy())


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """The DINOv2-style model without its head (LayerScale: the updates are derived), and a plain ViT backbone
    (no LayerScale: recorded as added)."""
    import timm

    from vitscope.loaders.checkpoint import save_checkpoint

    out = {}
    for arch, kw in (("vit_small_patch14_reg4_dinov2", dict(DINO_KW, num_classes=0)),
                     ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                                   num_classes=0))):
        m = randomise(timm.create_model(arch, pretrained=False, **kw), seed=2)
        size = kw["img_size"]
        dc = {"input_size": [3, size, size], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
              "crop_pct": 1.0}
        path = tmp_path_factory.mktemp("bb") / f"{arch}.safetensors"
        out[arch] = vitscope.load(str(save_checkpoint(path, m, arch=arch, kwargs=kw, classes=[], data_config=dc)))
    return out


@pytest.mark.parametrize("arch", ["vit_small_patch14_reg4_dinov2", "vit_tiny_patch16_224"])
def test_a_backbone_trace_holds_no_updates_and_its_export_writes_them_bit_for_bit(backbones, arch, tmp_path):
    """Nothing but trace.npz reads a backbone's sublayer updates: the trace keeps none (two [L, N, D] arrays
    fewer: 270 MB for ViT-L/14@518), and the export spools them to disk during the trace, then into the file:
    the same bytes as from a trace that holds them, in float32 and float16, all layers or some."""
    loaded = backbones[arch]
    assert loaded.spec.num_classes == 0
    lean = trace(loaded, IMAGE)
    assert not lean.has_updates and lean.attn_out is None and lean.attn_proj is None
    held = trace(loaded, IMAGE, capture=Capture(updates=True))
    assert held.has_updates and torch.equal(lean.resid, held.resid)
    layer_scale = held.attn_proj is not None
    assert layer_scale == (arch != "vit_tiny_patch16_224")
    kinds = ["attn_out", "mlp_out"] + (["attn_proj", "mlp_fc2"] if layer_scale else [])
    L = loaded.spec.num_layers
    for name, settings, rows in (("all", ExportSettings(analyses=False), list(range(L))),
                                 ("some", ExportSettings(analyses=False, layers=(0, L - 1), dtype="float16"), [0, L - 1])):
        _, res = export_image(loaded, IMAGE, tmp_path / name, settings)
        with np.load(tmp_path / name / "trace.npz") as z:
            for k in kinds:
                want = getattr(held, k)[rows].to(torch.float16 if settings.dtype == "float16" else torch.float32)
                assert np.array_equal(z[k], want.numpy()), (name, k)
            assert not {"attn_proj", "mlp_fc2"} & set(z.files) if not layer_scale else True
        assert not [p.name for p in (tmp_path / name).iterdir() if p.name.startswith(".")]  # no spool left
    # a session that holds no updates (the inspector's) exports them too: one more forward spools them
    session = Session(loaded, lean, image_path=IMAGE)
    export(session, tmp_path / "session", ExportSettings(analyses=False))
    with np.load(tmp_path / "session" / "trace.npz") as z:
        for k in kinds:
            assert np.array_equal(z[k], getattr(held, k).numpy()), k


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _partials(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
def test_export_killed_half_way_leaves_no_partial_output(tmp_path):
    model, image = str(ROOT / "samples" / "fashion-vit-p7.safetensors"), str(ROOT / "samples" / "fashion_0000_ankle-boot.png")
    out = tmp_path / "out"
    assert run_cli("export", model, image, "--out", str(out)).returncode == 0
    before = _snapshot(out)
    # --faithfulness makes the export long enough (hundreds of forwards) to be killed inside it
    p = subprocess.Popen([sys.executable, "-m", "vitscope", "export", model, image, "--out", str(out), "--overwrite",
                          "--faithfulness", "--class", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _partials(tmp_path) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.005)
    assert _partials(tmp_path), "the export never started writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _snapshot(out) == before  # the previous export, whole
    assert _partials(tmp_path)  # what the killed one wrote is only in its hidden partial folder
    # a fresh target killed half-way: no output directory at all
    fresh = tmp_path / "fresh"
    p = subprocess.Popen([sys.executable, "-m", "vitscope", "export", model, image, "--out", str(fresh),
                          "--faithfulness"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not [q for q in _partials(tmp_path) if q.name.startswith(".fresh")] and p.poll() is None:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not fresh.exists()
    # the next export removes what the killed ones left
    assert run_cli("export", model, image, "--out", str(out), "--overwrite", "--no-analyses").returncode == 0
    assert run_cli("export", model, image, "--out", str(fresh), "--no-analyses").returncode == 0
    assert _partials(tmp_path) == [] and (fresh / "trace.npz").is_file()


def test_export_out_of_space_keeps_the_previous_export(tmp_path):
    model, image = str(ROOT / "samples" / "fashion-vit-p7.safetensors"), str(ROOT / "samples" / "fashion_0000_ankle-boot.png")
    out = tmp_path / "out"
    assert run_cli("export", model, image, "--out", str(out), "--no-analyses").returncode == 0
    before = _snapshot(out)

    def small_files():  # a file may not grow past 16 KB: write() fails with EFBIG, as ENOSPC would
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    r = subprocess.run([sys.executable, "-m", "vitscope", "export", model, image, "--out", str(out), "--overwrite",
                        "--no-analyses"], capture_output=True, text=True, preexec_fn=small_files, timeout=120,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("vitscope: ") or "File too large" in r.stderr
    assert "File too large" in r.stderr and "previous export is intact" in r.stderr and "Traceback" not in r.stderr
    assert _snapshot(out) == before
    assert _partials(tmp_path) == []


# -- compare, the split view and the inspector on digest-only traces (small models, the budget set to 0) ------
SAMPLES = ROOT / "samples"
P7, FT, DIGIT = SAMPLES / "fashion-vit-p7.safetensors", SAMPLES / "digits-vit-ft.safetensors", SAMPLES / "mnist_8000_4.png"


@pytest.fixture
def digest_only(monkeypatch) -> list[str]:
    """Every trace keeps only its digest; returns the names of the threads that ran an attention pass."""
    monkeypatch.setattr(tracing, "FULL_ATTENTION_BYTES", 0)
    threads: list[str] = []
    original = Session.attention_pass

    def recorded(self, sink):
        import threading

        threads.append(threading.current_thread().name)
        return original(self, sink)

    monkeypatch.setattr(Session, "attention_pass", recorded)
    return threads


def _js(ta, tb, token: int) -> np.ndarray:  # scipy on the full attention's rows: independent of head_js
    from scipy.spatial.distance import jensenshannon

    L, H = ta.attn.shape[:2]
    return np.array([[jensenshannon(ta.attn[l, h, token].numpy(), tb.attn[l, h, token].numpy(), base=2)
                      for h in range(H)] for l in range(L)])


def test_compare_on_digest_only_traces(digest_only, tmp_path):
    from vitscope.compare import compare

    a, b = vitscope.load(P7), vitscope.load(FT)
    full_a, full_b = (trace(m, str(DIGIT), capture=Capture(attention="all")) for m in (a, b))
    res = compare(a, b, str(DIGIT), tmp_path)
    assert trace(a, str(DIGIT)).attn is None  # the budget really sends traces to the digest
    with np.load(tmp_path / "compare.npz") as z, np.load(tmp_path / "a" / "trace.npz") as za:
        np.testing.assert_allclose(z["head_js"], _js(full_a, full_b, 0), atol=1e-6)
        np.testing.assert_allclose(za["attn"], full_a.attn.numpy(), atol=1e-7)  # streamed during the trace
    assert res["head_js"]["mean"] == pytest.approx(float(_js(full_a, full_b, 0).mean()), abs=1e-6)
    assert digest_only == []  # the export streamed the attention: no second pass


def test_split_view_on_digest_only_traces_follows_the_query_in_a_worker(digest_only):
    import asyncio

    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.compare import CompareScreen
    from vitscope.views import ViewState

    from tui_helpers import settle, wait_for

    tok = 1 + 1 * 4 + 1  # patch (1, 1)
    full_a, full_b = (trace(vitscope.load(m), str(DIGIT), capture=Capture(attention="all")) for m in (P7, FT))

    async def run():
        app = InspectorApp(Options(model="", image=""), start=CompareScreen(str(P7), str(FT), str(DIGIT)))
        async with app.run_test(size=(160, 48)) as pilot:
            scr = app.screen
            await wait_for(pilot, lambda: scr.ready)
            await settle(pilot)
            assert all(se.trace.attn is None for se in scr.sessions)
            np.testing.assert_allclose(scr.head_js, _js(full_a, full_b, 0), atol=1e-6)  # the digests' CLS rows
            scr.state = scr.state.with_(token=tok, pane="gradcam")  # a pane that does not need the rows itself
            scr.refresh_view()
            await settle(pilot)
            np.testing.assert_allclose(scr._js_cache[tok], _js(full_a, full_b, tok), atol=1e-6)
            assert "the rows of patch (1, 1)" in str(scr.query_one("#js-grid").render())

    asyncio.run(run())
    assert len(digest_only) == 2 and "MainThread" not in digest_only  # one pass per model, both in a worker


def test_inspector_token_statistics_of_a_digest_only_trace_in_a_worker(digest_only):
    import asyncio

    from vitscope.tui.widgets import HeadGrid

    from tui_helpers import make_app, settle

    loaded = vitscope.load(P7)
    full = Session(loaded, trace(loaded, str(DIGIT), capture=Capture(attention="all")))
    digest = Session(loaded, trace(loaded, str(DIGIT)))
    assert digest.trace.attn is None

    async def run():
        app = make_app(digest, model=P7, image=DIGIT)
        async with app.run_test(size=(140, 40)) as pilot:
            await settle(pilot)
            scr = app.screen
            await pilot.press("t", "enter")  # the cursor's patch (2, 2) becomes the query
            await settle(pilot)
            tok = scr.state.token
            assert tok == 1 + 2 * 4 + 2
            np.testing.assert_allclose(scr.query_one(HeadGrid).values, full.head_stats(tok)[scr.stat], atol=1e-5)

    asyncio.run(run())
    assert digest_only and "MainThread" not in digest_only


def test_an_export_folder_has_the_mode_mkdir_gives(tmp_path):
    """The partial folder comes from mkdtemp (0700): moved in as it was, other users could not open the export."""
    from vitscope.atomic import UMASK
    from vitscope.export import ExportSettings, export

    session = Session.open(vitscope.load(P7), ROOT / "samples" / "fashion_0000_ankle-boot.png")
    res = export(session, tmp_path / "out", ExportSettings(analyses=False))
    assert (res.out_dir.stat().st_mode & 0o777) == 0o777 & ~UMASK
    assert all((f.stat().st_mode & 0o777) == 0o666 & ~UMASK for f in res.files if f.is_file())
