"""A line chart of a run's curves: textual-plotext's PlotextPlot, fed decimated series.

The screen hands it already decimated points (``vitscope.train.monitor.decimate``: at most a few hundred
per series, whatever the run's length), and the built chart is kept until the data or the size change,
so a repaint of the screen (a key elsewhere) never rebuilds it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from rich.text import Text
from textual_plotext import PlotextPlot


class Curves(PlotextPlot):
    DEFAULT_CSS = "Curves { height: 1fr; min-height: 6; }"

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self._series: list[tuple[str, Sequence[float], Sequence[float], str, str]] = []
        self._xlim: tuple[float, float] | None = None
        self._ylim: tuple[float, float] | None = None
        self._cache: tuple[tuple, Text] | None = None
        self._version = 0
        self.builds = 0  # how often the chart was built (the benchmark and tests read it)

    def set_series(self, series: list[tuple[str, Sequence[float], Sequence[float], str, str]],
                   xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
                   title: str | None = None) -> None:
        """``series``: (label, xs, ys, colour, marker) each; empty series are left out. No legend box (it
        would hide the start of a falling loss curve): the title names each series by its marker, which
        also tells them apart without colour (NO_COLOR)."""
        self._series = [s for s in series if len(s[1])]
        self._xlim, self._ylim = xlim, ylim
        if title is not None:
            self.title = title
        self._version += 1
        self._cache = None
        self.refresh()

    @property
    def points(self) -> int:
        return sum(len(s[1]) for s in self._series)

    def build_text(self) -> Text:
        if not self._series:  # an empty plotext chart has axes from -1 to 1: a loss would look negative
            return Text(f"{self.title}\n\n  no data yet", style="dim", no_wrap=True)
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        w, h = max(10, self.size.width), max(4, self.size.height)
        plt.plotsize(w, h)
        plt._set_size(w, h)
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        names = "  ".join(f"{'⣿' if m == 'braille' else m} {label}" for label, _, _, _, m in self._series)
        plt.title(f"{self.title}   {names}" if len(self._series) > 1 else self.title)
        if not self._series:
            plt.plot([0.0], [0.0], marker=" ")
        for _label, xs, ys, color, marker in self._series:
            x, y = list(map(float, xs)), list(map(float, ys))
            draw = plt.plot if marker == "braille" else plt.scatter  # per-epoch values: points, not a staircase
            draw(x, y, color=color, marker=marker)
        if self._xlim is not None and self._xlim[1] > self._xlim[0]:
            plt.xlim(*self._xlim)
            lo, hi = self._xlim
            if hi - lo >= 2:  # whole epochs on the axis, not 1.2 / 2.5 / 3.8
                step = max(1, int(np.ceil((hi - lo) / 6)))
                ticks = list(range(int(np.ceil(lo)), int(hi) + 1, step))
                plt.xticks(ticks, [str(t) for t in ticks])
        if self._ylim is not None and self._ylim[1] > self._ylim[0]:
            plt.ylim(*self._ylim)
            if self._ylim == (0.0, 1.0):  # shares and rates: tenths-friendly ticks, not sixths (0.17, 0.33...)
                plt.yticks([0.0, 0.25, 0.5, 0.75, 1.0], ["0", "0.25", "0.5", "0.75", "1"])
        self.builds += 1
        return Text.from_ansi(plt.build(), no_wrap=True)

    def render(self) -> Text:
        key = (self.size.width, self.size.height, self._version, self.app.theme)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.build_text())
        return self._cache[1]
