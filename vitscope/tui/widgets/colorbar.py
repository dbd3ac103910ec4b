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
        lut = COLORMAPS[cmap]
        lo_t, hi_t = format_value(lo) + " ", " " + format_value(hi) + "  "
        # the value is never cut (a cut number reads as another number): it moves to the second line
        value_first = bool(value) and len(lo_t) + 8 + len(hi_t) + len(value) <= width
        bar = max(4, min(24, width // 5, width - len(lo_t) - len(hi_t) - (len(value) + 2 if value_first else 0)))
        first = [Segment(lo_t, LABEL)]
        for i in range(bar):
            r, g, b = (int(c) for c in lut[(i * 255) // (bar - 1)])
            first.append(Segment(" ", Style.parse(f"on rgb({r},{g},{b})")))
        first.append(Segment(hi_t, LABEL))
        second = [Segment(label, LABEL)]
        if value_first:
            first.append(Segment(value + "  ", VALUE))
        elif value:
            second = [Segment(value + "  ", VALUE), Segment(label, LABEL)]
        used = sum(s.cell_length for s in first)
        if value_first and used + len(label) <= width:
            return [first + second]
        return [first, second]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))

    def render_line(self, y: int) -> Strip:
        lines = self._lines(self.size.width)
        return Strip(lines[y]).crop(0, self.size.width) if y < len(lines) else Strip([])
