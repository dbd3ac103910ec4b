"""The prediction panel: top classes with probability bars, the target class marked."""
from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import Static


class PredictionPanel(Static):
    """Top-5 classes with probability bars; the target class marked."""

    def show(self, top: list[tuple[int, str, float]], target: int, target_name: str, width: int = 10) -> None:
        key = (tuple(top), target, width)
        if key == getattr(self, "_key", None):  # unchanged: no update, no relayout
            return
        self._key = key
        t = Text()
        t.append("prediction (▶ target)\n", style="bold")
        if not all(math.isfinite(p) for _, _, p in top):  # no scores to rank or mark classes by: none listed
            t.append("outputs are NaN/Inf: no prediction\n", style="bold red")
            t.append("(the class panes are off)\n", style="grey50")
            self.update(t)
            return
        in_top = False
        for i, name, p in top:
            in_top |= i == target
            bar = "█" * int(round(p * width))
            t.append("▶" if i == target else " ", style="bold yellow")
            t.append(f"{name[:14]:<14} {p:6.1%}", style="bold" if i == target else "")
            t.append(f" {bar}\n" if bar else "\n", style="green" if i == top[0][0] else "grey50")
        if not in_top:
            t.append(f"▶ {target_name[:20]} (not in top 5)\n", style="yellow")
        self.update(t)
