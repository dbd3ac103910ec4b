"""Pictures from arrays: colormaps, overlays aligned to the patch grid, small multiples, PNG files.

numpy + Pillow only, shared by the TUI and ``vitscope export``, so a saved PNG is what the screen
showed. Maps are min-max scaled per map (the convention is written into exports) and upsampled with
nearest-neighbour so patch edges stay crisp and line up with the patches the model saw.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# 17 samples of matplotlib's colormaps (taken from matplotlib 3.11), interpolated linearly to 256
_ANCHORS = {
    "viridis": [(68, 1, 84), (72, 24, 106), (71, 45, 123), (66, 64, 134), (59, 82, 139), (51, 99, 141), (44, 114, 142), (38, 130, 142), (33, 145, 140), (31, 160, 136), (40, 174, 128), (63, 188, 115), (94, 201, 98), (132, 212, 75), (173, 220, 48), (216, 226, 25), (253, 231, 37)],  # noqa: E501
    "inferno": [(0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110), (138, 34, 106), (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29), (249, 142, 9), (252, 172, 17), (249, 203, 53), (242, 234, 105), (252, 255, 164)],  # noqa: E501
    "magma": [(0, 0, 4), (10, 8, 34), (29, 17, 71), (54, 16, 107), (81, 18, 124), (106, 28, 129), (131, 38, 129), (156, 46, 127), (183, 55, 121), (208, 65, 111), (231, 82, 99), (245, 107, 92), (252, 137, 97), (254, 167, 114), (254, 196, 136), (253, 226, 163), (252, 253, 191)],  # noqa: E501
    "plasma": [(13, 8, 135), (49, 5, 151), (76, 2, 161), (102, 0, 167), (126, 3, 168), (149, 17, 161), (170, 35, 149), (188, 53, 135), (204, 71, 120), (218, 90, 106), (230, 108, 92), (240, 128, 78), (248, 149, 64), (253, 172, 51), (253, 197, 39), (248, 223, 37), (240, 249, 33)],  # noqa: E501
    "turbo": [(48, 18, 59), (64, 64, 162), (70, 107, 227), (66, 148, 255), (40, 188, 235), (24, 221, 194), (50, 242, 152), (109, 254, 98), (164, 252, 60), (205, 236, 52), (238, 207, 58), (253, 172, 52), (251, 126, 33), (235, 80, 14), (208, 47, 5), (169, 22, 1), (122, 4, 3)],  # noqa: E501
    "gray": [(0, 0, 0), (255, 255, 255)],
}


def _lut(anchors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    a = np.asarray(anchors, dtype=np.float64)
    xs = np.linspace(0, 1, len(a))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, xs, a[:, c]) for c in range(3)], 1).round().astype(np.uint8)


COLORMAPS: dict[str, np.ndarray] = {name: _lut(a) for name, a in _ANCHORS.items()}
COLORMAP_NAMES = tuple(COLORMAPS)
# viridis by default: its dark end is a visible purple, so low values and the image edge survive the
# 256-colour palette that SSH delivers, where inferno's near-black end merges with the background
DEFAULT_CMAP = "viridis"


def normalise(grid: np.ndarray) -> np.ndarray:
    """Min-max scale a map to [0, 1] (a constant map becomes all zeros)."""
    g = np.asarray(grid, dtype=np.float64)
    lo, hi = float(g.min()), float(g.max())
    return (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)


def scale_to(grid: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] to [0, 1] (clipped); a degenerate range gives zeros."""
    g = np.asarray(grid, dtype=np.float64)
    return np.clip((g - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(g)


def colorize(grid: np.ndarray, cmap: str = DEFAULT_CMAP, scaled: bool = False,
             lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """[rows, cols] map -> uint8 [rows, cols, 3]: over [lo, hi] when given, [0, 1] when ``scaled``,
    else min-max scaled."""
    if lo is not None and hi is not None:
        g = scale_to(grid, lo, hi)
    else:
        g = np.asarray(grid, dtype=np.float64) if scaled else normalise(grid)
    idx = np.clip(np.rint(np.nan_to_num(g) * 255), 0, 255).astype(np.intp)
    return COLORMAPS[cmap][idx]


def upsample(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour upsampling of a patch-grid array to the image size: pixel y belongs to row
    floor(y * rows / height), which is exactly the patch that covered it when the size is a multiple."""
    rows, cols = arr.shape[:2]
    ri = (np.arange(height) * rows) // height
    ci = (np.arange(width) * cols) // width
    return arr[ri][:, ci]


def overlay(image: np.ndarray, grid: np.ndarray, alpha: float = 0.6, cmap: str = DEFAULT_CMAP,
            scaled: bool = False, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Blend the colourised map over the image (uint8 HxWx3); ``scaled``: the map is already in [0, 1]."""
    h, w = image.shape[:2]
    heat = upsample(colorize(grid, cmap, scaled, lo, hi), h, w).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heatmap(grid: np.ndarray, height: int, width: int, cmap: str = DEFAULT_CMAP, scaled: bool = False,
            lo: float | None = None, hi: float | None = None) -> np.ndarray:
    return upsample(colorize(grid, cmap, scaled, lo, hi), height, width)


def fit(height: int, width: int, max_height: int, max_width: int) -> tuple[int, int]:
    """The largest size with the image's aspect ratio inside (max_height, max_width)."""
    s = min(max_height / height, max_width / width)
    return max(1, int(height * s)), max(1, int(width * s))


def whole_pixel_size(height: int, width: int, max_height: int, max_width: int) -> tuple[int, int, bool]:
    """The display size of an image in (max_height, max_width): a whole number of display pixels per
    image pixel when at least one fits (every patch the same size on screen), else ``fit``. The flag
    says which."""
    k = min(max_height // height, max_width // width)
    if k >= 1:
        return height * k, width * k, True
    return (*fit(height, width, max_height, max_width), False)


def patch_box(shape: tuple[int, int], grid_shape: tuple[int, int], row: int, col: int) -> tuple[int, int, int, int]:
    """Pixel box (y0, y1, x0, x1), inclusive, of patch (row, col) in an image of ``shape``."""
    h, w = shape
    rows, cols = grid_shape
    return (row * h) // rows, ((row + 1) * h) // rows - 1, (col * w) // cols, ((col + 1) * w) // cols - 1


def mark_corners(image: np.ndarray, grid_shape: tuple[int, int], row: int, col: int,
                 color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Corner brackets around patch (row, col): marks the picked query without hiding the patch."""
    y0, y1, x0, x1 = patch_box(image.shape[:2], grid_shape, row, col)
    ky, kx = max(1, (y1 - y0 + 1) // 3), max(1, (x1 - x0 + 1) // 3)
    out = image.copy()
    for y in (y0, y1):
        out[y, x0:x0 + kx] = color
        out[y, x1 - kx + 1:x1 + 1] = color
    for x in (x0, x1):
        out[y0:y0 + ky, x] = color
        out[y1 - ky + 1:y1 + 1, x] = color
    return out


def outline_patch(image: np.ndarray, grid_shape: tuple[int, int], row: int, col: int,
                  color: tuple[int, int, int] = (0, 255, 255)) -> np.ndarray:
    """Draw the outline of patch (row, col) on a copy of the image."""
    y0, y1, x0, x1 = patch_box(image.shape[:2], grid_shape, row, col)
    out = image.copy()
    out[y0, x0:x1 + 1] = color
    out[y1, x0:x1 + 1] = color
    out[y0:y1 + 1, x0] = color
    out[y0:y1 + 1, x1] = color
    return out


def scale_up(image: np.ndarray, min_side: int) -> np.ndarray:
    """Integer nearest-neighbour enlargement so small images (28 px digits) stay readable."""
    h, w = image.shape[:2]
    k = max(1, -(-min_side // min(h, w)))
    return image.repeat(k, 0).repeat(k, 1) if k > 1 else image


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def small_multiples(tiles: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] = (),
                    col_labels: Sequence[str] = (), title: str = "", pad: int = 4,
                    min_tile: int = 96) -> Image.Image:
    """A grid of equally sized tiles (rows x cols of uint8 HxWx3) with labels, as one image."""
    tiles = [[scale_up(t, min_tile) for t in row] for row in tiles]
    th, tw = tiles[0][0].shape[:2]
    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    font = _font(12)
    left = (8 + max(int(font.getlength(s)) for s in row_labels) + pad) if row_labels else pad
    top = (22 if title else pad) + (16 if col_labels else 0)
    W = left + n_cols * (tw + pad) + pad
    H = top + n_rows * (th + pad) + pad
    canvas = Image.new("RGB", (W, H), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), title, fill=(235, 235, 235), font=_font(14))
    for j, s in enumerate(col_labels):
        x = left + j * (tw + pad) + tw // 2 - int(font.getlength(s)) // 2
        draw.text((x, top - 15), s, fill=(200, 200, 200), font=font)
    for i, row in enumerate(tiles):
        y = top + i * (th + pad)
        if i < len(row_labels):
            draw.text((4, y + th // 2 - 7), row_labels[i], fill=(200, 200, 200), font=font)
        for j, t in enumerate(row):
            canvas.paste(Image.fromarray(t), (left + j * (tw + pad), y))
    return canvas


def with_caption(image: np.ndarray, caption: str, min_side: int = 224) -> Image.Image:
    img = scale_up(image, min_side)
    font = _font(13)
    canvas = Image.new("RGB", (img.shape[1], img.shape[0] + 22), (24, 24, 24))
    canvas.paste(Image.fromarray(img), (0, 22))
    ImageDraw.Draw(canvas).text((4, 4), caption, fill=(235, 235, 235), font=font)
    return canvas


def colorbar(cmap: str, width: int, height: int = 1) -> np.ndarray:
    """A horizontal colour bar, uint8 [height, width, 3], low values on the left."""
    idx = (np.arange(width) * 255) // max(1, width - 1)
    return np.repeat(COLORMAPS[cmap][idx][None], height, 0)


def format_value(v: float) -> str:
    """A map value for a legend: 3 significant digits, scientific when tiny or huge."""
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.2e}"


def figure(picture: np.ndarray, title: str, cmap: str | None, lo: float, hi: float, label: str,
           lines: Sequence[str] = (), min_side: int = 280) -> Image.Image:
    """A saved view: title, the picture, a colour bar with its range and meaning, then text lines
    (prediction, settings). What the TUI shows, in one PNG."""
    img = scale_up(picture, min_side) if min_side else picture
    font, small = _font(13), _font(12)
    bar_extra = 0 if cmap is None else min(img.shape[1], 256) + 18 + int(small.getlength(label))
    # long caption lines wrap at the picture's width (at least TEXT_WIDTH px), not widen the PNG to them
    wrap_at = max(img.shape[1], bar_extra, TEXT_WIDTH)
    lines = [part for t in lines for part in _wrap(t, small, wrap_at)]
    w = max(img.shape[1], int(font.getlength(title)), bar_extra, *(int(small.getlength(t)) for t in lines))
    bar_h = 0 if cmap is None else 34
    text_h = 17 * len(lines)
    canvas = Image.new("RGB", (w + 16, 26 + img.shape[0] + bar_h + text_h + 12), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill=(235, 235, 235), font=font)
    canvas.paste(Image.fromarray(img), (8, 26))
    y = 26 + img.shape[0] + 6
    if cmap is not None:
        bw = min(w, 256)
        canvas.paste(Image.fromarray(colorbar(cmap, bw, 10)), (8, y))
        draw.text((8, y + 12), format_value(lo), fill=(220, 220, 220), font=small)
        hi_text = format_value(hi)
        draw.text((8 + bw - int(small.getlength(hi_text)), y + 12), hi_text, fill=(220, 220, 220), font=small)
        draw.text((8 + bw + 10, y), label, fill=(200, 200, 200), font=small)
        y += bar_h
    for line in lines:
        draw.text((8, y), line, fill=(210, 210, 210), font=small)
        y += 17
    return canvas


TEXT_WIDTH = 720  # px: the narrowest a figure's text wraps at


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` split at spaces into lines no wider than ``width`` px (a word longer than that stays whole)."""
    if font.getlength(text) <= width:
        return [text]
    out: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > width:
            out.append(line)
            line = "  " + word  # continuation lines indented, so they read as one caption
        else:
            line = candidate
    return out + [line]


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: Image.Image | np.ndarray, path: str | Path) -> Path:
    """Write a PNG atomically."""
    from .atomic import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, png_bytes(image))
    return path
