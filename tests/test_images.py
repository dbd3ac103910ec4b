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


def test_normal_sized_image_keeps_its_exact_pixels(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (1500, 2100, 3), dtype=np.uint8)
    p = _write(tmp_path, "photo.png", Image.fromarray(a), compress_level=1)
    assert np.array_equal(np.asarray(read_image(p)), a)


def test_big_sixteen_bit_image_is_box_reduced_then_scaled(tmp_path):
    """Shorter side >= 2 * KEEP_SIDE: reduced by a whole factor before the 8-bit scaling (the issue's 9400 px
    16-bit PNG peaked at 3 GB when scaled at full size; benchmarks/bench_image_memory.py)."""
    from vitscope.data.images import KEEP_SIDE

    h, w = 2 * KEEP_SIDE + 8, 2 * KEEP_SIDE + 100
    a = ((np.arange(w, dtype=np.uint32)[None] * 13 + np.arange(h, dtype=np.uint32)[:, None] * 7) % 65536
         ).astype(np.uint16)
    img = read_image(_write(tmp_path, "deep.png", Image.fromarray(a), compress_level=1))
    assert img.mode == "L" and img.size == (w // 2, h // 2)
    want = np.rint(a.reshape(h // 2, 2, w // 2, 2).astype(np.float64).mean((1, 3)) / 257)  # box mean, then 8 bits
    assert np.abs(np.asarray(img, dtype=np.float64) - want).max() <= 1


def test_reduced_sixteen_bit_image_keeps_the_full_images_range(tmp_path):
    """One pixel over 255 makes the image 16-bit-scaled (/257), as at full size, though averaging removes it."""
    from vitscope.data.images import KEEP_SIDE

    a = np.full((2 * KEEP_SIDE, 2 * KEEP_SIDE), 200, np.uint16)
    a[5, 5] = 300
    img = read_image(_write(tmp_path, "dim.png", Image.fromarray(a), compress_level=1))
    assert img.size == (KEEP_SIDE, KEEP_SIDE) and np.asarray(img).max() == 1  # 200/257 rounds to 1


@pytest.mark.parametrize("name", ["big.jpg", "big.png", "big.tiff"])
def test_big_image_is_reduced_and_keeps_its_orientation(tmp_path, name):
    """JPEG is decoded at reduced scale (draft), others box-reduced; EXIF orientation still applies."""
    from PIL import ImageOps

    from vitscope.data.images import KEEP_SIDE

    h, w = 2 * KEEP_SIDE, 2 * KEEP_SIDE + 512
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 4, : w // 2] = (250, 30, 30)  # a red block at the top left
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    p = _write(tmp_path, name, Image.fromarray(a), exif=exif.tobytes())
    img = read_image(p)
    assert img.size == (h // 2, w // 2)  # reduced by 2, and transposed
    ref = ImageOps.exif_transpose(Image.open(p)).convert("RGB").reduce(2)
    assert np.abs(np.asarray(img, dtype=np.int16) - np.asarray(ref, dtype=np.int16)).mean() < 1.0
    assert np.asarray(img)[10, -10, 0] > 200  # the top-left block is now at the top right
