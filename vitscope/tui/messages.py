"""Messages that workers post to screens: results are pushed, never polled."""
from __future__ import annotations

import time
from typing import Any

from textual.message import Message


class SessionReady(Message):
    """A model and image are open (a new Session)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session


class PaneReady(Message):
    """A pane's output was computed for a view state."""

    def __init__(self, state: Any, output: Any) -> None:
        super().__init__()
        self.state, self.output = state, output


class HeadValuesReady(Message):
    """Per-head values [L, H] of a grid statistic were computed (e.g. head ablation)."""

    def __init__(self, key: tuple, values: Any) -> None:
        super().__init__()
        self.key, self.values = key, values


class Progress(Message):
    """Progress of a long computation: done of total steps, started at ``t0`` (perf_counter)."""

    def __init__(self, label: str, done: int, total: int, t0: float) -> None:
        super().__init__()
        self.label, self.done, self.total, self.t0 = label, done, total, t0

    @property
    def rate(self) -> float:
        """Steps per second so far."""
        return self.done / max(1e-9, time.perf_counter() - self.t0)

    def eta(self) -> str:
        """", about N s left" once a rate is known, else ""."""
        rate = self.rate
        return f", about {(self.total - self.done) / rate:.0f} s left" if self.done and rate > 0 else ""


class DataReady(Message):
    """The browser's dataset (and model, unless it browses a crossval directory) are open."""

    def __init__(self, dataset: Any, loaded: Any) -> None:
        super().__init__()
        self.dataset, self.loaded = dataset, loaded


class SweepUpdate(Message):
    """A sweep's results so far (``final`` when it is complete)."""

    def __init__(self, result: Any, final: bool) -> None:
        super().__init__()
        self.result, self.final = result, final


class ThumbReady(Message):
    """The browser's thumbnail of sweep row ``row``, drawn at ``size``."""

    def __init__(self, row: int, picture: Any, caption: str, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.row, self.picture, self.caption, self.size = row, picture, caption, size


class RunPolled(Message):
    """What changed in a watched run directory (a ``vitscope.train.monitor.RunUpdate``); ``probes``: the
    run's probe set when it was read for the first time; ``log``: train.log's last lines when the run is in
    trouble."""

    def __init__(self, update: Any, probes: Any = None, log: list[str] | None = None) -> None:
        super().__init__()
        self.update, self.probes, self.log = update, probes, log or []


class CompareReady(Message):
    """Both sides of the split view are open: their Sessions, head_js [L, H] (None when the attention
    shapes differ) and the parent link in words ("" when neither is the other's parent)."""

    def __init__(self, sessions: list[Any], head_js: Any, parent: str) -> None:
        super().__init__()
        self.sessions, self.head_js, self.parent = sessions, head_js, parent


class FaithfulnessReady(Message):
    """The split view's faithfulness table: (model, map, deletion AUC, insertion AUC) rows, best first."""

    def __init__(self, rows: list[tuple[str, str, float, float]]) -> None:
        super().__init__()
        self.rows = rows
