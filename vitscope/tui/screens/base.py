"""What every vitscope screen shares: one error handler for its workers, and cancellable work."""
from __future__ import annotations

import contextlib

from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker


def cancellable() -> "contextlib.AbstractContextManager[None]":
    """Inside a thread worker: model runs stop at the next block once the worker is cancelled."""
    from ...analysis.hooks import Cancelled, cancel_when

    worker = get_current_worker()

    def check() -> None:
        if worker.is_cancelled:
            raise Cancelled()

    return cancel_when(check)


class VitscopeScreen(Screen):
    """A screen whose workers never take the app down: a failed worker is shown in the app."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        if type(error).__name__ == "Cancelled":  # abandoned on purpose (a newer request, x, or quit)
            return
        from ...errors import VitscopeError

        message = str(error) if isinstance(error, VitscopeError) else f"internal error: {type(error).__name__}: {error}"
        self.worker_failed(event.worker, message, isinstance(error, VitscopeError))

    def worker_failed(self, worker: Worker, message: str, user_error: bool) -> None:
        self.notify(message, severity="error", timeout=10)

    def palette_entries(self) -> list[tuple[str, str, str]]:
        """(name, what it does, action) for the command palette: the screen's bindings."""
        return [(f"{b.tooltip or b.description} ({key_label(b.key)})", b.tooltip or b.description, b.action)
                for b in self.BINDINGS]

    def show_help(self, title: str, tail: list[str]) -> None:
        """The keys table generated from the screen's bindings, then ``tail`` (more rows and notes)."""
        from ..modals import HelpScreen

        lines = [f"# vitscope {title} keys", "", "| key | action |", "| --- | --- |"]
        lines += [f"| {key_label(b.key)} | {b.tooltip or b.description} |" for b in self.BINDINGS]
        self.app.push_screen(HelpScreen("\n".join([*lines, *tail, "", "Esc, q or ? closes this help."])))


KEY_NAMES = {"question_mark": "?", "number_sign": "#", "minus": "-", "plus": "+", "equals_sign": "=",
             "greater_than_sign": ">", "less_than_sign": "<", "left_square_bracket": "[",
             "right_square_bracket": "]", "backspace": "⌫"}


def key_label(keys: str) -> str:
    """A binding's keys as a person reads them in help and the palette: "question_mark" -> "?"."""
    return " / ".join(KEY_NAMES.get(k, k) for k in keys.split(","))
