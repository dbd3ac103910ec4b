"""The colour bar under the picture: the map's range, the value under the cursor or query patch, and
what the values mean (on a second line when the terminal is narrow)."""
from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

from ...render import COLORMAPS, format_value

LABEL = Style.parse("grey70")
VALUE = Style.parse("bold")


class ColorBar(Widget):
    DEFAULT_CSS = "ColorBar { height: auto; width: 1fr; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._spec: tuple | None = None

    def show(self, cmap: str | None, lo: float, hi: float, label: str, value: str = "") -> None:
        spec = (cmap, lo, hi, label, value)
        if spec != self._spec:
            lines_before = len(self._lines(self.size.width)) if self._spec is not None else 0
            self._spec = spec
            self.refresh(layout=len(self._lines(self.size.width)) != lines_before)  # relayout only if it grows

    def _lines(self, width: int) -> list[list[Segment]]:
        if self._spec is None:
            return [[]]
        cmap, lo, hi, label, value = self._spec
        if cmap is None:
            return [[Segment(label, LABEL)]]
        bar = max(8, min(24, width // 5))
        lut = COLORMAPS[cmap]
        first = [Segment(format_value(lo) + " ", LABEL)]
        for i in range(bar):
            r, g, b = (int(c) for c in lut[(i * 255) // (bar - 1)])
            first.append(Segment(" ", Style.parse(f"on rgb({r},{g},{b})")))
        first.append(Segment(" " + format_value(hi) + "  ", LABEL))
        if value:
            first.append(Segment(value + "  ", VALUE))
        used = sum(s.cell_length for s in first)
        if used + len(label) <= width:
            return [first + [Segment(label, LABEL)]]
        return [first, [Segment(label, LABEL)]]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))

    def render_line(self, y: int) -> Strip:
        lines = self._lines(self.size.width)
        return Strip(lines[y]).crop(0, self.size.width) if y < len(lines) else Strip([])
