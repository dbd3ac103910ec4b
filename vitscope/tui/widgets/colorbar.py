"""A one-line colour bar: the map's range and meaning, and the value under the cursor or query patch."""
from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from ...render import COLORMAPS, format_value

LABEL = Style.parse("grey70")
VALUE = Style.parse("bold")


class ColorBar(Widget):
    DEFAULT_CSS = "ColorBar { height: 1; width: 1fr; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._spec: tuple | None = None

    def show(self, cmap: str | None, lo: float, hi: float, label: str, value: str = "") -> None:
        spec = (cmap, lo, hi, label, value)
        if spec != self._spec:
            self._spec = spec
            self.refresh()

    def render_line(self, y: int) -> Strip:
        if y or self._spec is None:
            return Strip([])
        cmap, lo, hi, label, value = self._spec
        if cmap is None:
            return Strip([Segment(label, LABEL)])
        width = max(8, min(24, self.size.width // 4))
        lut = COLORMAPS[cmap]
        segs = [Segment(format_value(lo) + " ", LABEL)]
        for i in range(width):
            r, g, b = (int(c) for c in lut[(i * 255) // (width - 1)])
            segs.append(Segment(" ", Style.parse(f"on rgb({r},{g},{b})")))
        segs.append(Segment(" " + format_value(hi) + "  ", LABEL))
        if value:
            segs.append(Segment(value + "  ", VALUE))
        segs.append(Segment(label, LABEL))
        return Strip(segs)
