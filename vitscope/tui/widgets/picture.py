"""A half-cell image: two pixels per terminal cell ('▀', foreground = upper pixel, background = lower).

Written here rather than taken from textual-image: it aligns exactly to the patch grid, maps clicks to
image pixels, and renders deterministically for snapshots (measured as fast as textual-image's).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

_STYLES: dict[tuple[int, ...], Style] = {}
# every segment carries a style: Textual's NO_COLOR (monochrome) filter reads style.color of each
NULL = Style.null()


def _style(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Style:
    key = (*top, *bottom)
    st = _STYLES.get(key)
    if st is None:
        st = _STYLES[key] = Style.parse(f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
    return st


_PACKED: dict[int, Style] = {}


def _packed_style(key: int) -> Style:
    st = _PACKED.get(key)
    if st is None:
        t = ((key >> 40) & 255, (key >> 32) & 255, (key >> 24) & 255)
        b = ((key >> 16) & 255, (key >> 8) & 255, key & 255)
        st = _PACKED[key] = _style(t, b)
    return st


def halfcell_segments(top: np.ndarray, bottom: np.ndarray) -> list[Segment]:
    """One terminal row from two pixel rows ([W, 3] uint8 each): '▀' cells, runs of one colour pair
    merged. Each cell's colour pair is packed into one integer with numpy, so the Python loop touches
    plain ints only (a key repaints thousands of cells)."""
    t, b = top.astype(np.int64), bottom.astype(np.int64)
    packed = ((t[:, 0] << 40) | (t[:, 1] << 32) | (t[:, 2] << 24) | (b[:, 0] << 16) | (b[:, 1] << 8) | b[:, 2])
    if not len(packed):
        return []
    starts = np.flatnonzero(np.r_[True, packed[1:] != packed[:-1]])
    lengths = np.diff(np.r_[starts, len(packed)])
    return [Segment("▀" * n, _packed_style(k)) for k, n in zip(packed[starts].tolist(), lengths.tolist())]


class HalfCellImage(Widget):
    """An RGB image drawn with '▀' cells (foreground = upper pixel, background = lower pixel).

    Nearest-neighbour sampling keeps patch edges crisp; the image keeps its aspect ratio and is
    centred. Strips are built once per (image, size) and reused for every repaint.
    """

    DEFAULT_CSS = "HalfCellImage { width: 1fr; height: 1fr; }"

    class Clicked(Message):
        """A click on the picture, in image pixel coordinates."""

        def __init__(self, x: float, y: float) -> None:
            super().__init__()
            self.image_x, self.image_y = x, y

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._image: np.ndarray | None = None
        self._strips: list[Strip] | None = None
        self._box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0 (cells), width (cells), height (px)
        self.on_built: "Callable[[tuple[int, int, int, int]], None] | None" = None  # told the box once drawn

    def set_image(self, image: np.ndarray | None) -> None:
        if image is self._image:
            return
        self._image = image
        self._strips = None
        self.refresh()

    def on_resize(self) -> None:
        self._strips = None
        self.refresh()  # a width change alone (a sibling appeared) must redraw, not crop the old lines

    def _build(self) -> list[Strip]:
        w, h = self.size.width, self.size.height
        blank = Strip([Segment(" " * w, NULL)]) if w else Strip([])
        img = self._image
        if img is None or w < 1 or h < 1:
            return [blank] * h
        ih, iw = img.shape[:2]
        scale = min(w / iw, 2 * h / ih)
        tw, th = max(1, int(iw * scale)), max(2, int(ih * scale) // 2 * 2)
        ys = (np.arange(th) * ih) // th
        xs = (np.arange(tw) * iw) // tw
        px = img[ys][:, xs]  # [th, tw, 3]
        x0 = (w - tw) // 2
        y0 = (h - th // 2) // 2
        self._box = (x0, y0, tw, th)
        lines = [blank] * h
        pad_l, pad_r = Segment(" " * x0, NULL), Segment(" " * (w - tw - x0), NULL)
        for row in range(th // 2):
            top, bot = px[2 * row], px[2 * row + 1]
            segs = [pad_l, *halfcell_segments(top, bot), pad_r]
            if 0 <= y0 + row < h:
                lines[y0 + row] = Strip(segs, w)
        return lines

    def render_line(self, y: int) -> Strip:
        if self._strips is None or len(self._strips) != self.size.height:
            self._strips = self._build()
            if self.on_built is not None:  # e.g. labels placed over the picture's columns
                self.call_later(self.on_built, self._box)
        return self._strips[y] if y < len(self._strips) else Strip([])

    def on_click(self, event) -> None:
        if self._image is None:
            return
        x0, y0, tw, th = self._box
        cx, cy = event.x - x0, (event.y - y0) * 2
        if 0 <= cx < tw and 0 <= cy < th:
            ih, iw = self._image.shape[:2]
            self.post_message(self.Clicked((cx + 0.5) * iw / tw, (cy + 1) * ih / th))
