"""Small multiples of every layer x head, labelled in text (not in pixels, which are unreadable at
terminal resolution). Tiles keep at least one pixel per patch; when they do not all fit, the view
shows a window that follows the selection (the title says which layers and heads are shown)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from .picture import NULL, halfcell_segments

LABEL = Style.parse("grey70")
SELECTED = Style.parse("bold reverse")
BG = np.array([30, 30, 30], np.uint8)
LABEL_W = 5


def _padded(segs: list[Segment], width: int) -> Strip:
    """A strip exactly ``width`` cells wide: blank to the right, so nothing of the last frame stays."""
    used = sum(s.cell_length for s in segs)
    if used < width:
        segs = segs + [Segment(" " * (width - used), NULL)]
    return Strip(segs).crop(0, width)


class OverviewGrid(Widget):
    DEFAULT_CSS = "OverviewGrid { width: 1fr; height: 1fr; }"

    class Selected(Message):
        def __init__(self, layer: int, head: int | str) -> None:
            super().__init__()
            self.cell_layer, self.cell_head = layer, head

    class WindowChanged(Message):
        """The layers and heads shown changed (after a resize or a move): the title says which."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._key: tuple | None = None
        self._tiles: tuple | None = None
        self._labels: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._make: Callable[[np.ndarray, int], np.ndarray] | None = None
        self._sel = (0, 0)
        self.zoom = 0  # z / Z: each step scales the fitted tile size by 1.5 (never below one pixel per patch)
        self._strips: list[Strip] | None = None
        self.window = ((0, 0), (0, 0))  # (first row, rows shown), (first col, cols shown)
        self._geom = (0, 0, 0, 0)  # tile width px, tile height px, first row, first col

    def show(self, key: tuple, tiles: tuple, labels: tuple, make_tile: Callable[[np.ndarray, int], np.ndarray],
             selected: tuple[int, int], min_px: int) -> None:
        """``make_tile(grid, size)`` renders one tile; ``min_px``: the smallest legible tile side."""
        new = (key, selected, self.zoom, min_px)
        if new == self._key:
            return
        self._key, self._tiles, self._labels, self._make, self._sel = new, tiles, labels, make_tile, selected
        self._min_px = min_px
        self._strips = None
        probe = make_tile(tiles[0][0], 64)
        self._aspect = probe.shape[0] / probe.shape[1]
        if self.size.width > LABEL_W + 4 and self.size.height >= 3:
            self._geom = self._layout(self._aspect)  # the window is known before the next paint
        self.refresh()

    def on_resize(self) -> None:
        self._strips = None

    def _layout(self, aspect: float) -> tuple[int, int, int, int]:
        n_rows, n_cols = len(self._tiles), len(self._tiles[0])
        W, H = self.size.width - LABEL_W, self.size.height - 1
        th_fit = ((2 * H) // n_rows - 2) // 2 * 2  # all rows: tile height in pixels, even (two per cell)
        fit_w = min(W // n_cols - 1, int(th_fit / aspect))
        tw = max(self._min_px, int(max(fit_w, self._min_px) * 1.5 ** self.zoom))
        tw = max(4, min(tw, W - 1))
        th = max(2, int(tw * aspect) // 2 * 2)
        vis_cols = max(1, min(n_cols, W // (tw + 1)))
        vis_rows = max(1, min(n_rows, (2 * H) // (th + 2)))
        r, c = self._sel
        r0 = min(max(0, r - vis_rows // 2), n_rows - vis_rows)
        c0 = min(max(0, c - vis_cols // 2), n_cols - vis_cols)
        self.window = ((r0, vis_rows), (c0, vis_cols))
        return tw, th, r0, c0

    def _build(self) -> list[Strip]:
        w, h = self.size.width, self.size.height
        blank = Strip([Segment(" " * w, NULL)])
        if self._tiles is None or w <= LABEL_W + 4 or h < 3:
            return [blank] * h
        before = self.window
        tw, th, r0, c0 = self._layout(self._aspect)
        self._geom = (tw, th, r0, c0)
        if self.window != before:
            self.post_message(self.WindowChanged())
        (_, nr), (_, nc) = self.window
        canvas = np.empty((nr * (th + 2), nc * (tw + 1), 3), np.uint8)
        canvas[:] = BG
        for i in range(nr):
            for j in range(nc):
                tile = self._make(self._tiles[r0 + i][c0 + j], tw)
                tile = tile[:th, :tw]
                if (r0 + i, c0 + j) == self._sel:
                    tile = tile.copy()
                    tile[[0, -1], :] = (0, 255, 255)
                    tile[:, [0, -1]] = (0, 255, 255)
                y, x = i * (th + 2), j * (tw + 1)
                canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        rows_l, cols_l = self._labels
        head = [Segment(" " * LABEL_W, NULL)]
        for j in range(nc):
            name = cols_l[c0 + j] if c0 + j < len(cols_l) else ""
            head.append(Segment(name.center(tw + 1)[:tw + 1], SELECTED if c0 + j == self._sel[1] else LABEL))
        lines = [_padded(head, w)]
        for line in range(min(h - 1, canvas.shape[0] // 2)):
            top, bot = canvas[2 * line], canvas[2 * line + 1]
            i, within = divmod(2 * line, th + 2)
            label = rows_l[r0 + i] if within == th // 2 // 2 * 2 and r0 + i < len(rows_l) else ""
            segs = [Segment(label.ljust(LABEL_W)[:LABEL_W], SELECTED if label and r0 + i == self._sel[0] else LABEL)]
            lines.append(_padded(segs + halfcell_segments(top, bot), w))
        return lines + [blank] * (h - len(lines))

    def render_line(self, y: int) -> Strip:
        if self._strips is None or len(self._strips) != self.size.height:
            self._strips = self._build()
        return self._strips[y] if y < len(self._strips) else Strip([])

    def on_click(self, event) -> None:
        if self._tiles is None or event.y < 1 or event.x < LABEL_W:
            return
        tw, th, r0, c0 = self._geom
        i, j = (2 * (event.y - 1)) // (th + 2), (event.x - LABEL_W) // (tw + 1)
        (_, nr), (_, nc) = self.window
        if i < nr and j < nc:
            H = len(self._tiles[0]) - 1
            col = c0 + j
            self.post_message(self.Selected(r0 + i, "mean" if col == H else col))
