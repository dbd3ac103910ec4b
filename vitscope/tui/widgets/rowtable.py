"""A virtual table: only the visible rows are formatted and drawn, so 50,000 rows cost what 40 do.

Written here rather than using Textual's DataTable, which builds and measures every row up front
(seconds for 50,000 rows, and again on every sort or filter); the browser's rows are numpy arrays
that are re-ordered in milliseconds, so the table only needs a row count and a formatter.
"""
from __future__ import annotations

from typing import Callable

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

# every segment carries a style: Textual's NO_COLOR (monochrome) filter reads style.color of each
NULL = Style.null()
HEADER = Style(bold=True, underline=True)
CURSOR = Style(reverse=True, bold=True)
WRONG = Style(color="#ff8787")


class RowTable(Widget):
    DEFAULT_CSS = "RowTable { height: 1fr; }"

    class Highlighted(Message):
        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    class Chosen(Message):
        """A row was double-clicked (Enter is a binding of the screen)."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.n = 0
        self.cursor = 0
        self.top = 0
        self.headers: list[str] = []
        self.widths: list[int] = []
        self.right: list[bool] = []
        self._cells: Callable[[int], list[str]] = lambda i: []
        self._marked: Callable[[int], bool] = lambda i: False
        self._lines: dict[tuple[int, bool, int], Strip] = {}  # drawn rows: (row, under the cursor, width)

    def set_source(self, n: int, headers: list[str], widths: list[int], right: list[bool],
                   cells: Callable[[int], list[str]], marked: Callable[[int], bool], cursor: int = 0) -> None:
        """``cells(row)`` gives a row's texts, ``marked(row)`` whether it is drawn as a mistake."""
        self.n, self.headers, self.widths, self.right = n, headers, widths, right
        self._cells, self._marked = cells, marked
        self._lines.clear()
        self.cursor = min(max(cursor, 0), max(n - 1, 0))
        self._keep_in_view(centre=True)
        self.refresh()

    @property
    def page(self) -> int:
        return max(1, self.size.height - 1)

    def move_to(self, row: int) -> None:
        row = min(max(row, 0), max(self.n - 1, 0))
        if row == self.cursor:
            return
        old = self.cursor
        self.cursor = row
        top = self.top
        self._keep_in_view()
        if top == self.top:  # only two lines change
            self.refresh_line(old)
            self.refresh_line(row)
        else:
            self.refresh()
        self.post_message(self.Highlighted(row))

    def refresh_line(self, row: int) -> None:
        y = row - self.top + 1
        if 0 < y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def _keep_in_view(self, centre: bool = False) -> None:
        page = self.page
        if centre and not (self.top <= self.cursor < self.top + page):
            self.top = self.cursor - page // 2
        elif self.cursor < self.top:
            self.top = self.cursor
        elif self.cursor >= self.top + page:
            self.top = self.cursor - page + 1
        self.top = max(0, min(self.top, max(0, self.n - page)))

    def on_resize(self) -> None:
        self._lines.clear()
        self._keep_in_view()

    def _text(self, texts: list[str]) -> str:
        parts = []
        used = 0
        for t, w, r in zip(texts, self.widths, self.right):
            if used + w > self.size.width:
                break
            t = t if len(t) <= w else t[:max(0, w - 1)] + "…"
            parts.append(t.rjust(w) if r else t.ljust(w))
            used += w + 1
        return " ".join(parts)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y == 0:
            return Strip([Segment(self._text(self.headers).ljust(width)[:width], HEADER)])
        row = self.top + y - 1
        if row >= self.n:
            return Strip.blank(width, NULL)
        key = (row, row == self.cursor, width)
        strip = self._lines.get(key)
        if strip is None:
            text = self._text(self._cells(row)).ljust(width)[:width]
            style = CURSOR if row == self.cursor else (WRONG if self._marked(row) else NULL)
            if row == self.cursor and self._marked(row):
                style = style + Style(color="#ff8787")
            strip = Strip([Segment(text, style)])
            if len(self._lines) > 400:
                self._lines.clear()
            self._lines[key] = strip
        return strip

    # -- mouse -------------------------------------------------------------------------------------
    def on_click(self, event: events.Click) -> None:
        row = self.top + event.y - 1
        if event.y >= 1 and row < self.n:
            self.move_to(row)
            if event.chain >= 2:
                self.post_message(self.Chosen(row))

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self.move_to(self.cursor + 3)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self.move_to(self.cursor - 3)
