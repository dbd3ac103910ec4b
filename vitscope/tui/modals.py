"""Modal screens: help, the class picker (fuzzy search), the open-image prompt (path completion), questions and
the training form. Each answers once: a second Enter of the same burst finds it gone (``DismissOnce``)."""
from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Input, Markdown, OptionList, Static
from textual.widgets.option_list import Option

from .textual_fixes import DismissOnce


class HelpScreen(DismissOnce, ModalScreen[None]):
    """The keys, generated from the screen's bindings and the pane registry; scrolls with j/k, arrows,
    PgUp/PgDn."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close"),
                Binding("j,down", "scroll(1)", "down", show=False), Binding("k,up", "scroll(-1)", "up", show=False),
                Binding("pagedown,space", "scroll(10)", "page down", show=False),
                Binding("pageup", "scroll(-10)", "page up", show=False)]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(self.text)

    def on_mount(self) -> None:
        self.query_one("#help-box").focus()

    def action_scroll(self, lines: int) -> None:
        box = self.query_one("#help-box", VerticalScroll)
        box.scroll_to(y=box.scroll_y + lines, animate=False)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


def fuzzy_score(query: str, text: str) -> int | None:
    """Subsequence match: lower is better; None when the letters do not appear in order."""
    q, t = query.lower(), text.lower()
    if not q:
        return 0
    if q in t:
        return t.index(q)
    pos, score = -1, 100
    for ch in q:
        pos = t.find(ch, pos + 1)
        if pos < 0:
            return None
        score += pos
    return score


class ClassPicker(DismissOnce, ModalScreen[int | None]):
    """Type to filter class names (fuzzy); Enter chooses, Esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, classes: list[str], current: int, title: str = "target class") -> None:
        super().__init__()
        self.class_names, self.current, self.title_text = classes, current, title

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Static(f"{self.title_text}: type to search, Enter to choose, Esc cancels", classes="picker-title")
            yield Input(placeholder="class name", id="class-query")
            yield OptionList(id="class-options")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one(Input).focus()

    def _fill(self, query: str) -> None:
        scored = [(s, i) for i, c in enumerate(self.class_names) if (s := fuzzy_score(query, c)) is not None]
        scored.sort()
        ol = self.query_one(OptionList)
        ol.clear_options()
        ol.add_options([Option(f"{self.class_names[i]}  ({i})", id=str(i)) for _, i in scored[:200]])
        if scored:
            ol.highlighted = 0

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        ol = self.query_one(OptionList)
        if self.is_active and ol.highlighted is not None and ol.option_count:
            self.dismiss(int(ol.get_option_at_index(ol.highlighted).id))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def on_key(self, event) -> None:
        ol = self.query_one(OptionList)
        if event.key in ("down", "up") and ol.option_count:
            step = 1 if event.key == "down" else -1
            ol.highlighted = ((ol.highlighted or 0) + step) % ol.option_count
            event.stop()

    def action_cancel(self) -> None:
        self.dismiss(None)


class PathSuggester(Suggester):
    """Completes file system paths as you type. A folder is listed once (``os.scandir``: the kind of each entry
    comes with the listing, no stat per file) and listed again only when its mtime changes, so each key in a
    folder of 20,000 images looks the completion up in the sorted names instead of reading the folder again
    on the screen's thread. Hidden names are offered once the name typed starts with a dot."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self._listing: tuple[str, int, list[str]] | None = None  # folder, its st_mtime_ns, sorted names (dirs end in /)

    def _names(self, folder: Path) -> list[str]:
        key = (str(folder), folder.stat().st_mtime_ns)
        if self._listing is None or self._listing[:2] != key:
            with os.scandir(folder) as entries:
                names = sorted(e.name + (os.sep if e.is_dir() else "") for e in entries)
            self._listing = (*key, names)
        return self._listing[2]

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        # split the text as typed: pathlib would read "dir/." as "dir" and complete it to "dir/./"
        head, sep, stem = value.rpartition(os.sep)
        folder = Path(os.path.expanduser(head or sep or "."))
        try:
            names = self._names(folder)
        except OSError:
            return None
        for name in itertools.islice(names, bisect.bisect_left(names, stem), None):
            if not name.startswith(stem):
                return None
            if stem.startswith(".") or not name.startswith("."):
                return value + name[len(stem):]
        return None


class OpenImage(DismissOnce, ModalScreen[str | None]):
    """A path prompt with completion: Tab (or →) accepts the completion shown; the pre-filled folder
    is kept (typing appends to it). With ``check`` (raises VitscopeError for a path it refuses) the path is
    checked in a thread before the prompt answers: a refusal shows in the prompt, which stays open, and the
    screen never waits on the file (the check refuses FIFOs and devices from their stat)."""

    BINDINGS = [Binding("escape", "cancel", "cancel"), Binding("tab", "accept_completion", "complete", priority=True)]

    def __init__(self, start: str, what: str = "open image", check: Callable[[str], object] | None = None) -> None:
        super().__init__()
        self.start, self.what, self.check = start, what, check

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Static(f"{self.what}: a path (Tab/→ accepts the completion), Enter to open", classes="picker-title")
            yield Input(value=self.start, suggester=PathSuggester(), id="image-path", select_on_focus=False)
            yield Static("", id="prompt-error")

    def on_mount(self) -> None:
        inp = self.query_one(Input)
        inp.focus()
        inp.cursor_position = len(inp.value)

    def action_accept_completion(self) -> None:
        inp = self.query_one(Input)
        if inp._suggestion and inp._suggestion.startswith(inp.value):
            inp.value = inp._suggestion
            inp.cursor_position = len(inp.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not self.is_active:  # a second Enter in the same burst: already answered
            return
        value = event.value.strip()
        if not value or self.check is None:
            self.dismiss(value or None)
            return
        self.query_one("#prompt-error", Static).update("checking…")
        self.run_worker(partial(self._check, value), thread=True, exclusive=True, group="path-check")

    def _check(self, value: str) -> None:
        """In a worker thread: decoding a big image takes a moment, and the screen stays live meanwhile."""
        from ..errors import VitscopeError

        try:
            self.check(value)
        except VitscopeError as e:
            self.app.call_from_thread(self._refused, str(e))
            return
        self.app.call_from_thread(self._accepted, value)

    def _refused(self, message: str) -> None:
        from rich.text import Text

        if self.is_active:  # not closed (Esc) while the check ran
            self.query_one("#prompt-error", Static).update(Text(message, style="bold red"))

    def _accepted(self, value: str) -> None:
        if not self.is_active:
            return
        if self.query_one("#image-path", Input).value.strip() == value:  # not edited since
            self.dismiss(value)
        else:
            self.query_one("#prompt-error", Static).update("")

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(DismissOnce, ModalScreen[bool]):
    """A yes/no question: y or Enter says yes, n or Esc no."""

    BINDINGS = [Binding("y,enter", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str, yes: str = "yes", no: str = "no") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Static(self.question, classes="picker-title")
            yield Static(f"[b]y[/b] {self.yes}    [b]n[/b] / Esc {self.no}")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class QuitRun(DismissOnce, ModalScreen[str]):
    """Quitting while a run trains: stop it (it saves), detach (it trains on), or cancel."""

    BINDINGS = [Binding("s", "answer('stop')", "stop"), Binding("d,ctrl+c", "answer('detach')", "detach"),
                Binding("c,escape,n", "answer('cancel')", "cancel")]

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Static(f"A run is training in {self.run_dir}.", classes="picker-title")
            yield Static("[b]s[/b]  stop it (it saves state.pt and last.safetensors; --resume continues)\n"
                         "[b]d[/b]  detach: quit and leave it training (vitscope watch reattaches)\n"
                         "[b]c[/b] / Esc  cancel: stay here")

    def action_answer(self, choice: str) -> None:
        self.dismiss(choice)


class TrainForm(DismissOnce, ModalScreen["tuple[list[str], str] | None"]):
    """A new run: the fields of ``vitscope train``, checked (as the CLI checks them) before it starts.
    Tab / shift+Tab move between fields, Enter (or ctrl+s) starts, Esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "cancel"), Binding("ctrl+s", "submit", "start", priority=True),
                Binding("ctrl+o", "toggle_overwrite", "overwrite", priority=True)]
    # Enter moves to the next field and starts the run only from the last one: keys typed before the form
    # appeared (or a stray Enter) never start a run with the defaults

    def __init__(self, values: dict[str, str] | None = None) -> None:
        super().__init__()
        self.values = values or {}
        self.overwrite = False

    def compose(self) -> ComposeResult:
        from ..train.monitor import FORM_FIELDS

        with VerticalScroll(id="form-box"):
            yield Static("new training run: Tab or Enter to the next field; ctrl+s (or Enter on the last field) "
                         "starts it in the background; Esc cancels", classes="picker-title")
            yield Static("", id="form-error")
            for key, label, default in FORM_FIELDS:
                yield Static(label, classes="form-label")
                yield Input(value=self.values.get(key, default), id=f"f-{key}", select_on_focus=False)
            yield Static("", id="form-overwrite")

    def on_mount(self) -> None:
        self._show_overwrite()
        self.query_one(Input).focus()

    def _show_overwrite(self) -> None:
        self.query_one("#form-overwrite", Static).update(
            f"ctrl+o  replace a run already in the directory: {'YES' if self.overwrite else 'no'}")

    def action_toggle_overwrite(self) -> None:
        self.overwrite = not self.overwrite
        self._show_overwrite()

    def fields(self) -> dict[str, str]:
        from ..train.monitor import FORM_FIELDS

        return {key: self.query_one(f"#f-{key}", Input).value for key, _, _ in FORM_FIELDS}

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        inputs = list(self.query(Input))
        if event.input is inputs[-1]:
            self.action_submit()
        else:
            inputs[inputs.index(event.input) + 1].focus()

    def action_submit(self) -> None:
        from ..errors import VitscopeError
        from ..train.monitor import form_to_args

        if not self.is_active:
            return
        try:
            args, run = form_to_args(self.fields(), self.overwrite)
        except VitscopeError as e:
            from rich.text import Text

            box = self.query_one("#form-error", Static)
            box.update(Text(str(e), style="bold red"))
            self.query_one("#form-box").scroll_home(animate=False)  # the message sits under the title
            return
        self.dismiss((args, str(run)))

    def action_cancel(self) -> None:
        self.dismiss(None)
