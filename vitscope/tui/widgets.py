"""Widgets: a half-cell image (two pixels per cell), the layer x head grid, the prediction panel.

Widgets hold no analysis logic: they draw arrays they are given and post messages upward.
"""
from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from ..render import COLORMAPS, normalise

_STYLES: dict[tuple[int, ...], Style] = {}


def _style(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Style:
    key = (*top, *bottom)
    st = _STYLES.get(key)
    if st is None:
        st = _STYLES[key] = Style.parse(f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
    return st


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

    def set_image(self, image: np.ndarray | None) -> None:
        if image is self._image:
            return
        self._image = image
        self._strips = None
        self.refresh()

    def on_resize(self) -> None:
        self._strips = None

    def _build(self) -> list[Strip]:
        w, h = self.size.width, self.size.height
        blank = Strip([Segment(" " * w)]) if w else Strip([])
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
        pad_l, pad_r = Segment(" " * x0), Segment(" " * (w - tw - x0))
        for row in range(th // 2):
            top, bot = px[2 * row], px[2 * row + 1]
            segs = [pad_l]
            run_style, run_len = None, 0
            for c in range(tw):
                st = _style(tuple(top[c]), tuple(bot[c]))
                if st is run_style:
                    run_len += 1
                else:
                    if run_style is not None:
                        segs.append(Segment("▀" * run_len, run_style))
                    run_style, run_len = st, 1
            segs.append(Segment("▀" * run_len, run_style))
            segs.append(pad_r)
            if 0 <= y0 + row < h:
                lines[y0 + row] = Strip(segs, w)
        return lines

    def render_line(self, y: int) -> Strip:
        if self._strips is None or len(self._strips) != self.size.height:
            self._strips = self._build()
        return self._strips[y] if y < len(self._strips) else Strip([])

    def on_click(self, event) -> None:
        if self._image is None:
            return
        x0, y0, tw, th = self._box
        cx, cy = event.x - x0, (event.y - y0) * 2
        if 0 <= cx < tw and 0 <= cy < th:
            ih, iw = self._image.shape[:2]
            self.post_message(self.Clicked((cx + 0.5) * iw / tw, (cy + 1) * ih / th))


class HeadGrid(Widget):
    """One row per layer, one column per head plus "mean"; cells coloured by a per-head statistic."""

    DEFAULT_CSS = "HeadGrid { height: auto; width: auto; }"
    can_focus = True

    class Selected(Message):
        def __init__(self, layer: int, head: int | str) -> None:
            super().__init__()
            self.cell_layer, self.cell_head = layer, head

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.values: np.ndarray | None = None  # [L, H]
        self.sel_layer, self.sel_head = 0, "mean"
        self.compact = False

    @property
    def cell(self) -> int:
        return 2 if self.compact else 4

    def set_values(self, values: np.ndarray | None) -> None:
        if values is self.values:  # cached arrays: most keys change only the selection
            return
        self.values = values
        self.refresh(layout=True)

    def select(self, layer: int, head: int | str) -> None:
        self.sel_layer, self.sel_head = layer, head
        self.refresh()

    def get_content_width(self, container: Size, viewport: Size) -> int:
        H = 0 if self.values is None else self.values.shape[1]
        return 4 + self.cell * (H + 1) + 1

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 + (0 if self.values is None else self.values.shape[0])

    def render_line(self, y: int) -> Strip:
        if self.values is None:
            return Strip([Segment("loading…" if y == 0 else "")])
        L, H = self.values.shape
        cw = self.cell
        dim = Style.parse("grey62")
        if y == 0:
            segs = [Segment("    ", dim)]
            for h in range(H):
                segs.append(Segment(f"h{h}".center(cw)[:cw], dim))
            segs.append(Segment("mean"[:cw].center(cw), dim))
            return Strip(segs)
        layer = y - 1
        if layer >= L:
            return Strip([])
        lut = COLORMAPS["viridis"]
        norm = normalise(self.values)
        segs = [Segment(f"L{layer:<2} ", Style.parse("bold" if layer == self.sel_layer else "grey62"))]
        for h in [*range(H), "mean"]:
            if h == "mean":
                v = float(norm[layer].mean())
            else:
                v = float(norm[layer, h])
            r, g, b = (int(c) for c in lut[int(round(v * 255))])
            selected = layer == self.sel_layer and h == self.sel_head
            fg = "black" if v > 0.6 else "white"
            mark = ("[" + "•" * (cw - 2) + "]") if selected and cw > 2 else ("<>" if selected else " " * cw)
            style = Style.parse(f"bold {fg} on rgb({r},{g},{b})")
            segs.append(Segment(mark, style))
        return Strip(segs)

    def on_click(self, event) -> None:
        if self.values is None or event.y < 1:
            return
        layer = event.y - 1
        col = (event.x - 4) // self.cell
        L, H = self.values.shape
        if 0 <= layer < L and 0 <= col <= H:
            self.post_message(self.Selected(layer, "mean" if col == H else int(col)))


class PredictionPanel(Static):
    """Top-5 classes with probability bars; the target class marked."""

    def show(self, top: list[tuple[int, str, float]], target: int, target_name: str, width: int = 10) -> None:
        t = Text()
        t.append("prediction (▶ target)\n", style="bold")
        in_top = False
        for i, name, p in top:
            in_top |= i == target
            bar = "█" * int(round(p * width))
            t.append("▶" if i == target else " ", style="bold yellow")
            t.append(f"{name[:14]:<14} {p:6.1%} ", style="bold" if i == target else "")
            t.append(f"{bar}\n", style="green" if i == top[0][0] else "grey50")
        if not in_top:
            t.append(f"▶ {target_name[:20]} (not in top 5)\n", style="yellow")
        self.update(t)
