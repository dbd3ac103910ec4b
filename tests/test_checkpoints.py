"""Real checkpoints people have: half precision, malformed metadata, weights that disagree with the
names or flags given with them, non-finite weights. Each ends in a model that opens correctly or in
one line naming the field, never in a Python exception or a silently wrong model."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vitscope
from vitscope.errors import VitscopeError
from vitscope.loaders import save_checkpoint

from conftest import ROOT, run_cli, tiny_timm

SAMPLE = ROOT / "samples" / "fashion-vit-p7.safetensors"
IMAGE = ROOT / "samples" / "fashion_0000_ankle-boot.png"


def _meta(path=SAMPLE) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["vitscope"])


def _write(path, sd, meta) -> str:
    save_file(sd, str(path), metadata=None if meta is None else {"vitscope": meta if isinstance(meta, str)
                                                                  else json.dumps(meta)})
    return str(path)


@pytest.fixture(scope="module")
def sample_sd():
    return load_file(str(SAMPLE))


def _logits(model_ref, **kw) -> torch.Tensor:
    loaded = vitscope.load(model_ref, **kw)
    return vitscope.trace(loaded, IMAGE).logits, loaded


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_open_and_compute_in_float32(tmp_path, sample_sd, dtype):
    want, _ = _logits(SAMPLE)
    half = {k: v.to(dtype) for k, v in sample_sd.items()}
    name = str(dtype).replace("torch.", "")
    for path, kw in [(_write(tmp_path / "ckpt.safetensors", half, _meta()), {}),
                     (_write(tmp_path / "bare.safetensors", half, None), {"heads": 4})]:
        got, loaded = _logits(path, **kw)
        assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
        assert f"weights stored as {name}; computed in float32" in loaded.spec.notes
        # the half-precision rounding of the weights, not a different computation
        rounded = vitscope.load(SAMPLE)
        for p in rounded.model.parameters():
            p.data = p.data.to(dtype).float()
        exact = vitscope.trace(rounded, IMAGE).logits
        if kw:  # the bare state dict guesses its preprocessing: compare with its own float32 twin
            exact = vitscope.trace(vitscope.load(_write(tmp_path / "f32.safetensors", {k: v.to(dtype).float()
                                                                                      for k, v in half.items()}, None),
                                                 heads=4), IMAGE).logits
        torch.testing.assert_close(got, exact, rtol=0, atol=1e-5)
        if not kw:
            assert int(got.argmax()) == int(want.argmax())
    out = run_cli("info", str(tmp_path / "ckpt.safetensors"))
    assert out.returncode == 0, out.stderr
    assert f"note: weights stored as {name}; computed in float32" in out.stdout


def _edit(meta: dict, **changes) -> dict:
    m = json.loads(json.dumps(meta))
    for key, value in changes.items():
        parts = key.split("__")
        d = m
        for p in parts[:-1]:
            d = d[p]
        d[parts[-1]] = value
    return m


MALFORMED = [
    ("[1, 2]", "vitscope metadata is a list, expected a JSON object"),
    ('"hello"', "vitscope metadata is a string, expected a JSON object"),
    ("null", "vitscope metadata is null, expected a JSON object"),
    ("{not json", "vitscope metadata is not valid JSON"),
    (dict(kwargs=3), "vitscope metadata: 'kwargs' is a number, expected an object"),
    (dict(kwargs=[1]), "vitscope metadata: 'kwargs' is a list, expected an object"),
    (dict(arch=None), "vitscope metadata: 'arch' is null, expected a timm model name"),
    (dict(kwargs__num_heads="4"), "vitscope metadata: kwargs.num_heads is '4', expected an integer"),
    (dict(kwargs__img_size=10 ** 9), "vitscope metadata: kwargs.img_size is 1000000000"),
    (dict(classes="0123456789"), "vitscope metadata: 'classes' is a string, expected a list of class names"),
    (dict(classes={"a": 1}), "vitscope metadata: 'classes' is an object, expected a list of class names"),
    (dict(data_config=[1]), "data_config is a list, expected an object"),
    (dict(data_config__input_size=[3, 28, 28], data_config__mean=[0.5] * 3, data_config__std=[0.5] * 3),
     "data_config.input_size has 3 channels but the model takes 1"),
    (dict(data_config__input_size=[1, "a", 28]), "data_config.input_size is [1, 'a', 28], expected [channels, "),
    (dict(data_config__input_size=[1, 1_000_000, 1_000_000]),
     "data_config.input_size [1, 1000000, 1000000] is out of range"),
    (dict(data_config__input_size=[1, 56, 56]), "data_config.input_size [1, 56, 56] does not match the model's "
                                                "input 28x28 px"),
    (dict(data_config__std=[0.0]), "data_config.std is [0.0]: every value must be > 0"),
    (dict(data_config__mean=["x"]), "data_config.mean is ['x'], expected 1 or 1 finite numbers"),
    (dict(data_config__interpolation="cubic-ish"), "data_config.interpolation is 'cubic-ish'"),
    (dict(data_config__crop_pct=0), "data_config.crop_pct is 0, expected a number in (0, 2]"),
    (dict(parent=5), "vitscope metadata: 'parent' is a number, expected a sha256 hex string or null"),
    (dict(train="yes"), "vitscope metadata: 'train' is a string, expected an object or null"),
]


@pytest.mark.parametrize("meta,message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_metadata_is_one_line_naming_the_field(tmp_path, sample_sd, meta, message):
    raw = meta if isinstance(meta, str) else _edit(_meta(), **meta)
    path = _write(tmp_path / "bad.safetensors", sample_sd, raw)
    with pytest.raises(VitscopeError) as e:
        vitscope.load(path)
    assert message in str(e.value)
    assert str(e.value).startswith(path)


def test_malformed_metadata_through_the_cli_fails_fast_with_status_2(tmp_path, sample_sd):
    # the crafted size that made `vitscope export` grow to 22.8 GB: one line, before anything is allocated
    path = _write(tmp_path / "huge.safetensors", sample_sd,
                  _edit(_meta(), data_config__input_size=[1, 1_000_000, 1_000_000]))
    out = run_cli("export", path, str(IMAGE), "--out", str(tmp_path / "out"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"vitscope: error: {path}: vitscope metadata: data_config.input_size [1, 1000000, 1000000] is out of "
        "range (channels 1..64, sides 1..4096 px)"]
    assert not (tmp_path / "out").exists()


def test_integer_weights_are_refused_naming_the_dtype(tmp_path, sample_sd):
    path = _write(tmp_path / "int.safetensors", {k: (v * 100).long() for k, v in sample_sd.items()}, _meta())
    with pytest.raises(VitscopeError, match=r"weights hold int64 values where .* has floating-point ones"):
        vitscope.load(path)


@pytest.fixture(scope="module")
def resaved(tmp_path_factory):
    """The sample saved again by today's save_checkpoint, which records the self-check."""
    loaded = vitscope.load(SAMPLE)
    s = loaded.spec
    path = tmp_path_factory.mktemp("resaved") / "model.safetensors"
    save_checkpoint(path, loaded.model, arch=s.arch, kwargs=s.kwargs, classes=s.classes, data_config=s.data_config)
    return path


def test_self_check_is_recorded_and_passes(resaved):
    check = _meta(resaved)["check"]
    assert len(check["values"]) == 10 and "sin(0.37 n + 1.3 d)" in check["what"]
    want, _ = _logits(SAMPLE)
    got, _ = _logits(resaved)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("heads", [1, 2, 8, 16])
def test_metadata_with_the_wrong_number_of_heads_is_refused(tmp_path, resaved, heads):
    # 8 heads of 8 channels fit 4-head weights exactly; only the self-check can tell (88.2% -> 52.5% otherwise)
    path = _write(tmp_path / "h.safetensors", load_file(str(resaved)), _edit(_meta(resaved), kwargs__num_heads=heads))
    with pytest.raises(VitscopeError, match=rf"does not reproduce the outputs recorded .*num_heads {heads}"):
        vitscope.load(path)


def test_self_check_allows_the_same_weights_in_half_precision(tmp_path, resaved):
    sd = {k: v.half() for k, v in load_file(str(resaved)).items()}
    path = _write(tmp_path / "h.safetensors", sd, _meta(resaved))
    assert vitscope.load(path).spec.num_heads == 4


def test_flags_and_files_that_disagree_with_the_weights_are_refused(tmp_path, sample_sd, resaved):
    with pytest.raises(VitscopeError, match="--heads 8 disagrees with the checkpoint, whose metadata has num_heads 4"):
        vitscope.load(resaved, heads=8)
    assert vitscope.load(resaved, heads=4).spec.num_heads == 4
    # a bare state dict: --heads against a config.json beside it
    bare = _write(tmp_path / "w.safetensors", sample_sd, None)
    (tmp_path / "config.json").write_text(json.dumps({"num_heads": 4}))
    with pytest.raises(VitscopeError, match="--heads 8 disagrees with config.json's num_heads 4"):
        vitscope.load(bare, heads=8)
    assert vitscope.load(bare).spec.num_heads == 4
    # timm:NAME --weights: the arch's width must be the weights' (its heads are what they get)
    with pytest.raises(VitscopeError, match="the weights have dim 64 but timm's vit_large_patch16_224 has dim 1024"):
        vitscope.load("timm:vit_large_patch16_224", weights=bare)
    tiny = tiny_timm("vit_tiny_patch16_224", embed_dim=192, num_heads=3)
    w = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), w)
    with pytest.raises(VitscopeError, match="--heads 4 disagrees with timm's vit_tiny_patch16_224, which has 3 heads"):
        vitscope.load("timm:vit_tiny_patch16_224", weights=w, heads=4)
    assert vitscope.load("timm:vit_tiny_patch16_224", weights=w, img_size=32).spec.num_heads == 3


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, sample_sd):
    sd = dict(sample_sd)
    sd["head.weight"] = sd["head.weight"].clone()
    sd["head.weight"][0, 0] = float("nan")
    return _write(tmp_path_factory.mktemp("nan") / "nan.safetensors", sd, _meta())


def _strict_json(text: str):
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_weights_export_valid_json_and_say_so(tmp_path, nan_checkpoint):
    loaded = vitscope.load(nan_checkpoint)
    assert any("NON-FINITE WEIGHTS: NaN or Inf in head.weight" in n for n in loaded.spec.notes)
    out = run_cli("export", nan_checkpoint, str(IMAGE), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert "prediction: none (the model's outputs are NaN or infinite" in out.stdout
    assert "NON-FINITE WEIGHTS" in out.stderr
    pred = _strict_json((tmp_path / "out" / "prediction.json").read_text())
    assert pred["top5"][0]["logit"] is None
    with np.load(tmp_path / "out" / "trace.npz") as z:
        assert not np.isfinite(z["logits"]).all()
        assert np.isfinite(z["attn"]).all()  # attention does not go through the head: still valid


def test_non_finite_outputs_in_the_inspector(nan_checkpoint):
    # it crashed on open (a NaN probability bar) and then on g: now it opens, says so, and refuses the class panes
    from tui_helpers import make_app, settle

    from vitscope.views import Session

    session = Session.open(vitscope.load(nan_checkpoint), IMAGE)
    app = make_app(session, model=nan_checkpoint)

    async def run():
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            panel = str(app.screen.query_one("PredictionPanel").render())
            assert "outputs are NaN/Inf: no prediction" in panel
            # no class listed with "nan", none marked as the target: there are no scores to rank them by
            assert "nan" not in panel.replace("NaN", "") and "▶" not in panel.replace("(▶ target)", "")
            for key in ("g", "e", "G", "p", "r", "C", "escape", "n"):
                await pilot.press(key)
                await settle(pilot)
            messages = " ".join(str(n.message) for n in app._notifications)
            assert "outputs on this image are NaN or infinite" in messages

    asyncio.run(run())
    assert app.return_code in (0, None)


def test_guessed_preprocessing_is_said_wherever_numbers_come_from_it(tmp_path, sample_sd):
    # the same weights score 88.2% as a bare state dict (timm's default preprocessing guessed) and 91.3% as
    # a checkpoint: every command that computes numbers says it guessed
    bare = _write(tmp_path / "bare.safetensors", sample_sd, None)
    note = "note: preprocessing guessed: timm ViT defaults"
    export = run_cli("export", bare, str(IMAGE), "--heads", "4", "--out", str(tmp_path / "out"), "--no-analyses")
    assert export.returncode == 0, export.stderr
    assert note in export.stderr
    data = ROOT / "tests" / "data" / "mnist"
    sweep = run_cli("sweep", bare, "--heads", "4", "--dataset", "mnist", "--data-dir", str(data), "--limit", "20",
                    "--json", "--no-cache")
    assert sweep.returncode == 0, sweep.stderr
    assert note in sweep.stderr
    json.loads(sweep.stdout)  # stdout stays one JSON object
