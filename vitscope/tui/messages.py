"""Messages that workers post to screens: results are pushed, never polled."""
from __future__ import annotations

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
