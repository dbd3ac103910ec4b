"""The layer x head grid: one row per layer, one column per head plus "mean", cells coloured by a
per-head statistic (its values shown in the cells on request)."""
from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from ...render import COLORMAPS, normalise

DIM = Style.parse("grey62")
BOLD = Style.parse("bold")


def cell_text(v: float) -> str:
    """A value in four characters, two decimals below 1 whatever the sign: -0.04 -> '-.04', 0.31 -> ' .31',
    2.31 -> '2.31', 12.3 -> '12.3', 123 -> ' 123'."""
    if abs(v) < 0.995:
        return f"{v:.2f}".replace("0.", ".", 1).rjust(4)
    for text in (f"{v:.2f}", f"{v:.1f}", f"{v:.0f}"):
        if len(text) <= 4:
            return text.rjust(4)
    return ("+" if v > 0 else "-") + "big"


class HeadGrid(Widget):
    DEFAULT_CSS = "HeadGrid { height: auto; width: auto; }"

    class Selected(Message):
        def __init__(self, layer: int, head: int | str) -> None:
            super().__init__()
            self.cell_layer, self.cell_head = layer, head

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.values: np.ndarray | None = None  # [L, H + 1]: the heads, then the "mean" column
        self.sel_layer, self.sel_head = 0, "mean"
        self.compact = False
        self.show_values = False
        self._styles: dict[tuple[int, int], tuple[Style, Style]] = {}

    @property
    def cell(self) -> int:
        if self.show_values:
            return 5
        return 2 if self.compact else 4

    def set_values(self, values: np.ndarray | None) -> None:
        if values is self.values:  # cached arrays: most keys change only the selection
            return
        self.values = values
        self._norm = None if values is None else normalise(values)  # once per array, not per line
        self.refresh(layout=True)

    def set_show_values(self, show: bool) -> None:
        if show != self.show_values:
            self.show_values = show
            self.refresh(layout=True)

    def set_compact(self, compact: bool) -> None:
        if compact != self.compact:
            self.compact = compact
            self.refresh(layout=True)

    def select(self, layer: int, head: int | str) -> None:
        if (layer, head) != (self.sel_layer, self.sel_head):
            self.sel_layer, self.sel_head = layer, head
            self.refresh()

    def value(self, layer: int, head: int | str) -> float | None:
        if self.values is None:
            return None
        return float(self.values[layer, -1] if head == "mean" else self.values[layer, head])

    def get_content_width(self, container: Size, viewport: Size) -> int:
        H = 0 if self.values is None else self.values.shape[1] - 1
        return 4 + self.cell * (H + 1) + 1

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 + (0 if self.values is None else self.values.shape[0])

    def _colour(self, v: float) -> Style:
        r, g, b = (int(c) for c in COLORMAPS["viridis"][int(round(v * 255))])
        fg = "black" if v > 0.6 else "white"
        return Style.parse(f"bold {fg} on rgb({r},{g},{b})")

    def render_line(self, y: int) -> Strip:
        if self.values is None:
            return Strip([Segment("loading…" if y == 0 else "", DIM)])
        L, H = self.values.shape[0], self.values.shape[1] - 1
        cw = self.cell
        if y == 0:
            segs = [Segment("  h " if cw == 2 else "    ", DIM)]
            if cw == 2:  # compact: bare head numbers (every other one from 10 heads on), "m" for the mean
                step = 2 if H >= 10 else 1
                segs += [Segment(f"{h:<{2 * step}}", DIM) for h in range(0, H, step)]
                if H % step:
                    segs.append(Segment("  ", DIM))
                segs.append(Segment("m ", DIM))
            else:
                segs += [Segment(f"h{h}".center(cw)[:cw], DIM) for h in range(H)]
                segs.append(Segment("mean"[:cw].center(cw), DIM))
            return Strip(segs)
        layer = y - 1
        if layer >= L:
            return Strip([])
        norm = self._norm
        segs = [Segment(f"L{layer:<2} ", BOLD if layer == self.sel_layer else DIM)]
        for h in [*range(H), "mean"]:
            v = float(norm[layer, -1] if h == "mean" else norm[layer, h])
            selected = layer == self.sel_layer and h == self.sel_head
            if self.show_values:  # a space, then four characters: negative values never run together
                mark = " " + cell_text(self.value(layer, h))
                style = self._colour(v) + (Style(underline=True, reverse=True) if selected else Style())
            else:
                mark = ("[" + "•" * (cw - 2) + "]") if selected and cw > 2 else ("<>" if selected else " " * cw)
                style = self._colour(v)
            segs.append(Segment(mark, style))
        return Strip(segs)

    def on_click(self, event) -> None:
        if self.values is None or event.y < 1:
            return
        layer = event.y - 1
        col = (event.x - 4) // self.cell
        L, H = self.values.shape[0], self.values.shape[1] - 1
        if 0 <= layer < L and 0 <= col <= H:
            self.post_message(self.Selected(layer, "mean" if col == H else int(col)))
