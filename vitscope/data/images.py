"""Reading any image Pillow can open and preparing it exactly as the model expects.

The shown image and the model input come from one geometric transform (timm's eval resize + crop),
so overlays drawn on the shown image line up with the patch grid the model saw.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import VitscopeError
from ..paths import check_regular_file

MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold; larger files are refused from their header
MIN_SIDE = 8
# Images whose shorter side is at least twice this are box-reduced by a whole factor while (JPEG: Pillow's
# draft, DCT scaling) or right after decoding, keeping the shorter side >= KEEP_SIDE: that is over twice the
# largest ViT input (518 px; SAM-style 1024) before timm's resize, so the model's input is unchanged to the eye,
# and memory stays near one decoded copy. Smaller images keep their exact pixels.
KEEP_SIDE = 2048
FOLDER_HINT = "to go over a folder of images use --dataset folder:DIR (one subfolder per class) with inspect or sweep"


@dataclass
class PreparedImage:
    """What the model saw (``shown``, uint8 HxWx3) and the exact normalised tensor (``input``)."""

    shown: np.ndarray
    input: Any  # torch.Tensor [C, H, W] float32
    source: str


def read_image(path: str | Path, min_side: int = MIN_SIDE) -> Image.Image:
    """Open an image file as 8-bit 'L' or 'RGB' (first frame of animations; 16-bit scaled down; very large
    images reduced while decoding, see KEEP_SIDE)."""
    path = check_regular_file(Path(path).expanduser(), "an image file", FOLDER_HINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data": the error says it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # lazy: reads the header only
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise VitscopeError(f"image is {w}x{h} pixels, over the {MAX_PIXELS:,}-pixel safety limit "
                                        "(decompression-bomb guard)", path)
                im.seek(0)
                img = decode_reduced(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise VitscopeError(f"image is over the {MAX_PIXELS:,}-pixel safety limit (decompression-bomb guard)",
                            path) from None
    except UnidentifiedImageError:
        raise VitscopeError("not an image (Pillow cannot identify the file)", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise VitscopeError(f"cannot read image, truncated or corrupt? ({str(e)[:160]})", path) from None
    if min(img.size) < min_side:
        raise VitscopeError(f"image is {img.size[0]}x{img.size[1]} pixels, too small (min {min_side} a side)", path)
    return img


def reduce_factor(size: tuple[int, int]) -> int:
    """The whole factor a size is box-reduced by: 1 unless the shorter side is at least 2 * KEEP_SIDE."""
    return max(1, min(size) // KEEP_SIDE)


def decode_reduced(im: Image.Image) -> Image.Image:
    """Decode an opened image as to_8bit does, box-reduced by reduce_factor first (and 16-bit scaled to 8 bits
    after reducing, with the full image's range), so memory peaks near one decoded copy."""
    factor = reduce_factor(im.size)
    if factor > 1 and im.format == "JPEG":
        w, h = im.size
        im.draft(None, (-(-w // factor), -(-h // factor)))  # decodes at 1/2, 1/4 or 1/8 scale, not below
    im.load()
    factor = reduce_factor(im.size)
    if factor == 1:
        return to_8bit(im)
    extrema = im.getextrema() if im.mode in HIGH_DEPTH_MODES else None
    exif = im.getexif()
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    w, h = im.size
    # Image.reduce has no 16-bit path; a BOX resize to the same size is the same box average
    small = (im.reduce(factor) if not im.mode.startswith("I;16")
             else im.resize((-(-w // factor), -(-h // factor)), Image.Resampling.BOX))
    if exif:  # the reduced copy is a plain Image: carry the orientation for exif_transpose
        small.info["exif"] = exif.tobytes()
    return to_8bit(small, extrema)


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_8bit(im: Image.Image, extrema: tuple[float, float] | None = None) -> Image.Image:
    """Grey stays 'L', everything else becomes 'RGB'; 16/32-bit and float images are scaled to 0-255 (over
    ``extrema``, the range of the image before any reduction, when given)."""
    im = ImageOps.exif_transpose(im) or im
    if im.mode in HIGH_DEPTH_MODES:
        lo, hi = extrema or im.getextrema()
        if im.mode == "F":
            a = (np.asarray(im, dtype=np.float64) - lo) / (hi - lo or 1.0) * 255.0
            return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        if hi <= 255:
            return Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L")
        # rint(a / 65535 * 255) = rint(a / 257), in integers: a / 257 is never exactly halfway
        a = np.asarray(im).astype(np.int64 if im.mode == "I" else np.uint32)
        a += 128
        a //= 257
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    if im.mode in ("L", "RGB"):
        return im.copy()
    if im.mode in ("1", "LA"):
        return im.convert("L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def eval_transforms(data_config: dict[str, Any]):
    """timm's eval transform, split into (PIL -> PIL geometric part, PIL -> normalised tensor part)."""
    from timm.data import create_transform
    from torchvision import transforms as T

    cfg = dict(data_config)
    c, h, w = cfg["input_size"]
    tf = create_transform(input_size=(c, h, w), is_training=False, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                          interpolation=cfg.get("interpolation", "bilinear"), crop_pct=cfg.get("crop_pct", 1.0),
                          crop_mode=cfg.get("crop_mode", "center"))
    steps = list(tf.transforms)
    split = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
    return T.Compose(steps[:split]), T.Compose(steps[split:])


def prepare(img: Image.Image, data_config: dict[str, Any], source: str = "") -> PreparedImage:
    """Resize/crop as the model's data config says; return the shown RGB array and the input tensor."""
    c = data_config["input_size"][0]
    geo, to_tensor = eval_transforms(data_config)
    img = img.convert("L" if c == 1 else "RGB")
    seen = geo(img)
    x = to_tensor(seen).float()
    shown = np.asarray(seen.convert("RGB"), dtype=np.uint8).copy()
    return PreparedImage(shown=shown, input=x, source=source)


def load_image(path: str | Path, data_config: dict[str, Any]) -> PreparedImage:
    h, w = data_config["input_size"][1:]
    return prepare(read_image(path, min_side=min(MIN_SIDE, h, w)), data_config, str(path))
