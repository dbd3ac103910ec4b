"""Any Pillow-readable image, converted to the model's channels; shown image and input stay aligned."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitscope.data.images import load_image, read_image
from vitscope.errors import VitscopeError

CFG_RGB = {"input_size": [3, 32, 32], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
           "interpolation": "bilinear", "crop_pct": 1.0}
CFG_GREY = {"input_size": [1, 28, 28], "mean": [0.286], "std": [0.353], "interpolation": "bilinear", "crop_pct": 1.0}


def _write(tmp_path, name, img, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


rng = np.random.default_rng(0)
RGB = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("name,make", [
    ("rgb.png", lambda: Image.fromarray(RGB)),
    ("grey.png", lambda: Image.fromarray(RGB[..., 0])),
    ("rgba.png", lambda: Image.fromarray(np.dstack([RGB, np.full((40, 40), 255, np.uint8)]))),
    ("palette.png", lambda: Image.fromarray(RGB).convert("P")),
    ("photo.jpg", lambda: Image.fromarray(RGB)),
    ("pic.bmp", lambda: Image.fromarray(RGB)),
    ("pic.tiff", lambda: Image.fromarray(RGB)),
    ("pic.webp", lambda: Image.fromarray(RGB)),
    ("anim.gif", lambda: Image.fromarray(RGB).convert("P")),
    ("deep.png", lambda: Image.fromarray(RGB[..., 0].astype(np.uint16) * 257)),
])
@pytest.mark.parametrize("cfg", [CFG_RGB, CFG_GREY], ids=["rgb-model", "grey-model"])
def test_formats_convert_to_model_channels(tmp_path, name, make, cfg):
    p = _write(tmp_path, name, make())
    prep = load_image(p, cfg)
    c, h, w = cfg["input_size"]
    assert prep.input.shape == (c, h, w) and prep.input.dtype == torch.float32
    assert prep.shown.shape == (h, w, 3) and prep.shown.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)
    img = read_image(_write(tmp_path, "ramp.png", Image.fromarray(ramp)))
    a = np.asarray(img)
    assert img.mode == "L" and a.min() == 0 and a.max() == 255 and len(np.unique(a)) > 200


def test_shown_image_is_what_the_model_saw(tmp_path):
    """De-normalising the input gives back the shown image: overlays line up with the patches."""
    p = _write(tmp_path, "wide.png", Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)))
    cfg = dict(CFG_RGB, crop_pct=0.875)
    prep = load_image(p, cfg)
    mean = torch.tensor(cfg["mean"])[:, None, None]
    std = torch.tensor(cfg["std"])[:, None, None]
    back = ((prep.input * std + mean) * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(back - prep.shown).max() <= 1


def test_gif_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (10, 200)]
    p = tmp_path / "a.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    assert np.asarray(read_image(p)).mean() < 50


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_text("hello, not an image"), "not an image"),
    (lambda p: Image.new("RGB", (1, 1)).save(p, format="PNG"), "too small"),
    (lambda p: p.mkdir(), "directory"),
    (lambda p: None, "no such"),
])
def test_bad_images(tmp_path, make, match):
    p = tmp_path / "bad.png"
    make(p)
    with pytest.raises(VitscopeError, match=match) as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_truncated_image(tmp_path):
    p = _write(tmp_path, "t.png", Image.fromarray(RGB))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(VitscopeError, match="truncated or corrupt"):
        read_image(p)


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    # a 20000x20000 PNG header with almost no data: refused from the header alone
    p = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(p, optimize=False, compress_level=9)
    with pytest.raises(VitscopeError, match="safety limit|too large"):
        read_image(p)
