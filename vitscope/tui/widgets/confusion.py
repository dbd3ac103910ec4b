"""A confusion matrix of counts: rows are true classes, columns predicted ones; a cursor cell.

Correct counts (the diagonal) are shaded green, mistakes red, each by its share of the largest count
of its kind; the numbers are always written, so the matrix reads without colour (NO_COLOR).
"""
from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

# every segment carries a style: Textual's NO_COLOR (monochrome) filter reads style.color of each
NULL = Style.null()
DIM = Style(dim=True)
BOLD = Style(bold=True)


def _shade(frac: float, hue: tuple[int, int, int]) -> Style:
    """Background from dark grey to ``hue`` by ``frac`` (0..1), text readable on it."""
    base = np.array([38, 38, 38])
    rgb = (base + (np.array(hue) - base) * (0.15 + 0.85 * frac)).astype(int) if frac > 0 else base
    fg = "black" if rgb.mean() > 140 else "white"
    return Style(bgcolor=f"rgb({rgb[0]},{rgb[1]},{rgb[2]})", color=fg)


class ConfusionMatrix(Widget):
    DEFAULT_CSS = "ConfusionMatrix { height: 1fr; }"

    class Chosen(Message):
        def __init__(self, true: int, pred: int) -> None:
            super().__init__()
            self.true, self.pred = true, pred

    class Moved(Message):
        def __init__(self, true: int, pred: int) -> None:
            super().__init__()
            self.true, self.pred = true, pred

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.counts = np.zeros((0, 0), dtype=np.int64)
        self.class_names: list[str] = []
        self.cursor = (0, 0)
        self.c0 = 0  # first column shown (many classes scroll sideways)
        self.r0 = 0

    def set_counts(self, counts: np.ndarray, classes: list[str]) -> None:
        self.counts, self.class_names = counts, classes
        C = len(classes)
        self.cursor = (min(self.cursor[0], C - 1), min(self.cursor[1], C - 1)) if C else (0, 0)
        off = counts.copy()
        np.fill_diagonal(off, 0)
        self._max_off = max(1, int(off.max())) if C else 1
        self._max_diag = max(1, int(np.diag(counts).max())) if C else 1
        self.refresh()

    @property
    def label_width(self) -> int:
        return min(14, max([len(c) for c in self.class_names] + [6])) + 2

    @property
    def cell_width(self) -> int:
        return max(4, len(str(int(self.counts.max()))) + 2) if self.counts.size else 4

    def _window(self) -> tuple[int, int]:
        """How many rows and columns fit."""
        cols = max(1, (self.size.width - self.label_width) // self.cell_width)
        rows = max(1, self.size.height - 3)
        return rows, cols

    def move(self, dr: int, dc: int) -> None:
        C = len(self.class_names)
        if not C:
            return
        r, c = self.cursor
        self.cursor = (min(max(r + dr, 0), C - 1), min(max(c + dc, 0), C - 1))
        rows, cols = self._window()
        r, c = self.cursor
        self.r0 = min(max(self.r0, r - rows + 1), r)
        self.c0 = min(max(self.c0, c - cols + 1), c)
        self.refresh()
        self.post_message(self.Moved(*self.cursor))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        C = len(self.class_names)
        if not C:
            return Strip.blank(width, NULL)
        lw, cw = self.label_width, self.cell_width
        rows, cols = self._window()
        shown = range(self.c0, min(C, self.c0 + cols))
        if y == 0:
            text = "pred →".ljust(lw)[:lw] + "".join(str(j).rjust(cw - 1) + " " for j in shown)
            return Strip([Segment(text.ljust(width)[:width], DIM)])
        if y == 1:
            text = "true ↓".ljust(lw)[:lw] + "".join((self.class_names[j][:cw - 1]).rjust(cw - 1) + " " for j in shown)
            return Strip([Segment(text.ljust(width)[:width], DIM)])
        i = self.r0 + y - 2
        if y - 2 >= rows or i >= C:
            if i == C and y - 2 < rows:
                legend = ("green: correct · red: mistakes, shaded by count · Enter lists the cell's images")
                return Strip([Segment(legend[:width].ljust(width), DIM)])
            return Strip.blank(width, NULL)
        name = self.class_names[i] if self.class_names[i] == str(i) else f"{i} {self.class_names[i]}"
        segs = [Segment(name[:lw - 1].ljust(lw), BOLD if i == self.cursor[0] else NULL)]
        for j in shown:
            v = int(self.counts[i, j])
            style = _shade(v / self._max_diag, (60, 170, 90)) if i == j else \
                _shade(v / self._max_off, (220, 70, 60)) if v else _shade(0, (0, 0, 0))
            text = str(v).rjust(cw - 2)
            if (i, j) == self.cursor:
                segs.append(Segment(f"[{text}]", style + Style(bold=True, reverse=True)))
            else:
                segs.append(Segment(f" {text} ", style))
        used = lw + cw * len(shown)
        segs.append(Segment(" " * max(0, width - used), NULL))
        return Strip(segs).crop(0, width)

    def on_click(self, event: events.Click) -> None:
        lw, cw = self.label_width, self.cell_width
        if event.y < 2 or event.x < lw:
            return
        i, j = self.r0 + event.y - 2, self.c0 + (event.x - lw) // cw
        if i < len(self.class_names) and j < len(self.class_names):
            self.cursor = (i, j)
            self.refresh()
            self.post_message(self.Chosen(i, j) if event.chain >= 2 else self.Moved(i, j))
