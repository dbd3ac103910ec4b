"""--weight-dtype: Linear and Conv2d weights held in bfloat16/float16, computed in float32 (loaders/held.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vitscope.loaders import load, save_checkpoint
from vitscope.loaders.files import read_safetensors
from vitscope.loaders.held import held_dtype
from vitscope.tracing import trace

from conftest import ROOT, TIMM_TINY, run_cli, tiny_timm

DC = dict(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3, interpolation="bilinear", crop_pct=1.0)
CLASSES = [f"c{i}" for i in range(10)]


def _checkpoint(tmp_path, arch="vit_tiny_patch16_224", name="m.safetensors", **overrides):
    m = tiny_timm(arch, **overrides)
    return m, save_checkpoint(tmp_path / name, m, arch=arch, kwargs=dict(TIMM_TINY, **overrides), classes=CLASSES,
                              data_config=DC)


def _rounded_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The independent reference: a float32 model whose Linear/Conv2d weights are rounded to ``dtype`` and back."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.copy_(m.weight.to(dtype).float())
    return ref


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "deit3_small_patch16_224"])  # deit3: LayerScale
def test_held_weights_compute_as_float32_on_the_rounded_weights(tmp_path, dtype, arch):
    m, path = _checkpoint(tmp_path, arch)
    held = load(path, weight_dtype=dtype)
    want_dtype = getattr(torch, dtype)
    assert held_dtype(held.model) is want_dtype
    linears = [mod for mod in held.model.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
    assert linears and all(mod.parametrizations.weight.original.dtype is want_dtype for mod in linears)
    assert all(mod.weight.dtype is torch.float32 for mod in linears)  # what hooks and analyses read
    # what is held: the Linear/Conv2d weights at half the bytes, the rest (norms, biases, gammas) float32
    weights = sum(mod.weight.numel() for mod in linears)
    full = sum(p.numel() * 4 for p in m.parameters())
    assert sum(p.numel() * p.element_size() for p in held.model.parameters()) == full - 2 * weights

    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = _rounded_copy(m, want_dtype)
    with torch.inference_mode():
        want = ref(x[None])[0]
    got = trace(held, x)
    torch.testing.assert_close(got.logits, want, rtol=1e-5, atol=1e-5)
    # against float32 weights, only the rounding: small, and larger for bfloat16 (8 bits) than float16 (11)
    exact = trace(load(path), x)
    err = float((got.logits - exact.logits).abs().max())
    assert 0 < err < (0.05 if dtype == "bfloat16" else 0.01)
    assert float((got.attn - exact.attn).abs().max()) < 0.01
    assert [n for n in held.spec.notes if n.startswith("weights held")] == [
        f"weights held in memory as {dtype} (--weight-dtype), computed in float32: each weight rounded, relative "
        f"error at most {2.0 ** (-8 if dtype == 'bfloat16' else -11):.2g}"]


def test_a_file_stored_in_half_precision_and_held_so_computes_exactly_as_before(tmp_path):
    m = tiny_timm()
    sd = {k: v.half() for k, v in m.state_dict().items()}
    half = m.half().float()
    path = save_checkpoint(tmp_path / "h.safetensors", half, arch="vit_tiny_patch16_224", kwargs=TIMM_TINY,
                           classes=CLASSES, data_config=DC)
    tensors, meta = read_safetensors(path)
    save_file({k: sd[k].contiguous() for k in tensors}, str(tmp_path / "f16.safetensors"), metadata=meta)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(2))
    as_float32 = load(tmp_path / "f16.safetensors")
    held = load(tmp_path / "f16.safetensors", weight_dtype="float16")
    assert torch.equal(trace(held, x).logits, trace(as_float32, x).logits)
    assert any(n.endswith("computed in float32: exactly as stored in the file") for n in held.spec.notes)


def test_reading_while_converting_gives_what_safetensors_reads(tmp_path):
    """The hand-written reader (one tensor at a time) against safetensors' own, for every dtype it reads."""
    g = torch.Generator().manual_seed(0)
    tensors = {"blocks.0.attn.qkv.weight": torch.randn(6, 4, generator=g), "norm.weight": torch.randn(4, generator=g),
               "pos_embed": torch.randn(1, 3, 4, generator=g).half(), "head.weight": torch.randn(2, 4).bfloat16(),
               "steps": torch.tensor([3, -1], dtype=torch.int64), "mask": torch.tensor([True, False]),
               "small": torch.arange(5, dtype=torch.int8), "empty.weight": torch.zeros(0, 4),
               "scalar": torch.tensor(2.5, dtype=torch.float64), "u": torch.arange(3, dtype=torch.uint8)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    got, meta = read_safetensors(path, hold=torch.bfloat16)
    assert meta == {"k": "v"} and set(got) == set(tensors)
    with safe_open(str(path), framework="pt") as f:
        for k in tensors:
            want = f.get_tensor(k)
            if k in ("blocks.0.attn.qkv.weight", "empty.weight", "head.weight"):  # 2-D weights: held
                assert got[k].dtype is torch.bfloat16 and torch.equal(got[k], want.to(torch.bfloat16)), k
            else:
                assert got[k].dtype is want.dtype and torch.equal(got[k], want), k


def test_a_truncated_file_is_one_line_with_the_held_reader_too(tmp_path):
    _, path = _checkpoint(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) - 100])
    r = run_cli("info", str(bad), "--weight-dtype", "bfloat16")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cut.safetensors" in r.stderr, r.stderr


def test_export_and_info_hold_the_weights_and_say_so(tmp_path):
    _, path = _checkpoint(tmp_path)
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    r = run_cli("export", str(path), str(img), "--out", str(tmp_path / "o"), "--weight-dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    assert "note: weights held in memory as bfloat16 (--weight-dtype), computed in float32" in r.stderr
    r32 = run_cli("export", str(path), str(img), "--out", str(tmp_path / "o32"))
    a, b = np.load(tmp_path / "o" / "trace.npz"), np.load(tmp_path / "o32" / "trace.npz")
    assert 0 < np.abs(a["logits"] - b["logits"]).max() < 0.05
    pred = json.loads((tmp_path / "o" / "prediction.json").read_text())
    assert pred["top5"][0]["class"] in CLASSES and any(n.startswith("weights held") for n in pred["notes"])
    info = run_cli("info", str(path), "--weight-dtype", "float16")
    assert info.returncode == 0 and "weights held in memory as float16" in info.stdout


def test_a_sweep_cache_tells_held_weights_from_float32(tmp_path):
    from vitscope.sweep import model_identity

    _, path = _checkpoint(tmp_path)
    plain, held = model_identity(load(path)), model_identity(load(path, weight_dtype="bfloat16"))
    assert held != plain and held.startswith(plain) and held.endswith(":held-bfloat16")


def test_timm_names_hold_weights_too_and_the_flag_is_checked():
    loaded = load("timm:vit_tiny_patch16_224", weight_dtype="bfloat16", img_size=32)
    assert held_dtype(loaded.model) is torch.bfloat16
    assert any(n.startswith("weights held in memory as bfloat16") for n in loaded.spec.notes)
    from vitscope.errors import VitscopeError

    with pytest.raises(VitscopeError, match="unknown weight dtype"):
        load("timm:vit_tiny_patch16_224", weight_dtype="int8")


@pytest.mark.parametrize("half", [False, True])
def test_a_hugging_face_directory_held_in_bfloat16_claims_only_what_it_knows(tmp_path, half):
    """Its q, k and v are concatenated after reading, so whether they were stored in bfloat16 cannot be told:
    the note then claims the rounding bound (true either way), never 'exactly as stored'."""
    from conftest import tiny_hf

    m = tiny_hf()
    if half:
        m = m.to(torch.bfloat16)
    m.save_pretrained(tmp_path / "hf")
    held = load(tmp_path / "hf", weight_dtype="bfloat16")
    plain = load(tmp_path / "hf")
    assert held_dtype(held.model) is torch.bfloat16
    note = next(n for n in held.spec.notes if n.startswith("weights held"))
    assert note.endswith("each weight rounded, relative error at most 0.0039"), note
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    err = float((trace(held, x).logits - trace(plain, x).logits).abs().max())
    assert err == 0.0 if half else 0 < err < 0.05


def test_the_inspector_a_saved_picture_and_info_say_the_weights_are_held(tmp_path):
    import asyncio

    from tui_helpers import IMAGE, MODEL, settle, text
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.views import Session, ViewState

    loaded = load(MODEL, weight_dtype="bfloat16")
    assert loaded.spec.weights_held == "bfloat16" and load(MODEL).spec.weights_held == ""
    session = Session.open(loaded, IMAGE)
    assert "weights held as bfloat16" in session.settings_line(ViewState())

    async def run():
        app = InspectorApp(Options(model=str(MODEL), image=str(IMAGE)), session=session)
        async with app.run_test(size=(80, 24)) as pilot:  # first in the bar: seen at 80 columns too
            await settle(pilot)
            assert text(app, "#topbar").startswith("vitscope  weights bfloat16  ·  fashion-vit-p7.safetensors")

    asyncio.run(run())
    info = run_cli("info", str(MODEL), "--weight-dtype", "bfloat16")
    assert "loaded, held as bfloat16 (computed in float32)" in info.stdout


def test_compare_holds_both_models_and_says_so_per_side(tmp_path):
    """`vitscope compare --weight-dtype`: both sides held, each side's notes on stderr and in its export, and
    the change per head within the rounding of float32's."""
    s = ROOT / "samples"
    models = [str(s / "fashion-vit-p7.safetensors"), str(s / "digits-vit-ft.safetensors")]  # a finetune of it
    image = str(s / "mnist_8000_4.png")
    r = run_cli("compare", *models, image, "--out", str(tmp_path / "held"), "--weight-dtype", "bfloat16")
    assert r.returncode == 0, r.stderr
    for side in ("A", "B"):  # printed once each, and recorded in compare.json
        note = f"{side}: weights held in memory as bfloat16 (--weight-dtype), computed in float32"
        assert r.stderr.count(f"note: {note}") == 1, r.stderr
        assert any(n.startswith(note) for n in json.loads((tmp_path / "held" / "compare.json").read_text())["notes"])
    for side in ("a", "b"):
        pred = json.loads((tmp_path / "held" / side / "prediction.json").read_text())
        assert any(n.startswith("weights held in memory as bfloat16") for n in pred["notes"])
    r32 = run_cli("compare", *models, image, "--out", str(tmp_path / "f32"))
    assert r32.returncode == 0 and "weights held" not in r32.stderr
    # a second run into the same DIR is refused before either model loads: one line, nothing else printed
    again = run_cli("compare", *models, image, "--out", str(tmp_path / "held"), "--weight-dtype", "bfloat16")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "pass --overwrite" in again.stderr, again.stderr
    with np.load(tmp_path / "held" / "compare.npz") as h, np.load(tmp_path / "f32" / "compare.npz") as f:
        assert 0 < np.abs(h["head_js"] - f["head_js"]).max() < 0.02


def test_the_split_view_says_both_sides_are_held():
    import asyncio

    from tui_helpers import settle, text
    from vitscope.tui.app import InspectorApp, Options
    from vitscope.tui.screens.compare import CompareScreen

    s = ROOT / "samples"
    a, b, image = s / "fashion-vit-p7.safetensors", s / "digits-vit-ft.safetensors", s / "mnist_8000_4.png"

    async def bar(**kw) -> str:
        app = InspectorApp(Options(model="", image=""), start=CompareScreen(str(a), str(b), str(image), kw))
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot)
            for _ in range(100):
                if "→" in text(app, "#topbar"):
                    break
                await pilot.pause(0.1)
            return text(app, "#topbar")

    held, plain = asyncio.run(bar(weight_dtype="bfloat16")), asyncio.run(bar())
    assert "vitscope compare  ·  weights bfloat16  ·  A: fashion-vit-p7 → " in held, held
    assert "weights" not in plain and "A: fashion-vit-p7 → " in plain, plain


def test_a_backward_keeps_held_weights_held_and_gives_the_rounded_models_gradients(tmp_path, monkeypatch):
    """Grad-CAM, Chefer's gradients and the class maps on held weights: each layer's float32 weight is made again
    for the backward instead of being saved by autograd (every one at once: float32's memory), the results equal
    a float32 model's on the rounded weights bit for bit, and no weight gets a .grad."""
    from vitscope.analysis.class_maps import class_attention_maps
    from vitscope.analysis.gradients import attention_gradients, gradcam
    from vitscope.loaders import held as held_mod

    m, path = _checkpoint(tmp_path, "deit3_small_patch16_224")  # LayerScale: the paper's read points too
    held = load(path, weight_dtype="bfloat16")
    ref = _rounded_copy(m, torch.bfloat16)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(2))
    layout = held.spec.layout
    remade = []
    made = held_mod._Held.__init__

    def counting(self, w, saved):
        remade.append(w)
        made(self, w, saved)

    monkeypatch.setattr(held_mod._Held, "__init__", counting)

    cam, cam_ref = gradcam(held.model, x, 3, layout), gradcam(ref, x, 3, layout)
    held_layers = [mod for mod in held.model.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
    assert {id(w) for w in remade} == {id(mod.parametrizations.weight.original) for mod in held_layers}
    assert torch.equal(cam, cam_ref)
    for got, want in zip(attention_gradients(held.model, x, 3), attention_gradients(ref, x, 3)):
        assert torch.equal(got, want)
    assert torch.equal(class_attention_maps(held.model, x, 3, layout), class_attention_maps(ref, x, 3, layout))
    for model in (held.model, ref):  # the flags are as they were, and no weight gradient was kept
        assert all(p.requires_grad and p.grad is None for p in model.parameters())
