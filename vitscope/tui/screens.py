"""Modal screens: help, the class picker (fuzzy search) and the open-image prompt (path completion)."""
from __future__ import annotations

import os
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Input, Markdown, OptionList, Static
from textual.widgets.option_list import Option

HELP = """\
# vitscope keys

| key | action |
| --- | --- |
| h j k l / arrows | move in the layer x head grid (in token mode: move the patch cursor) |
| PgUp / PgDn | previous / next layer |
| a | mean over heads on/off |
| o | overview: all layers x heads as small multiples |
| t | token mode: pick the query patch (Enter picks, Esc leaves) |
| c | query back to CLS |
| r | rollout pane on/off |
| g / e / G | Grad-CAM / Chefer relevance / gradient rollout for the target class |
| p | class identifiability of each patch at this layer (class-embedding projections); the sidebar lists the query token's projected classes |
| [ / ] | overlay opacity down / up |
| m | next colormap |
| v | cycle overlay / raw map / image only |
| n | next grid statistic (entropy, distance, prefix attention, head importance by ablation) |
| C | choose the target class |
| O | open another image |
| s | save the current view as PNG |
| ? | this help |
| ctrl+p | command palette (every action) |
| q | quit |

Mouse: click a grid cell to select that layer and head; click a patch to make it the query token.

Conventions: maps are the query token's attention row over patch tokens, min-max scaled per map;
models without a CLS token use the mean over patch queries. Rollout: 0.5*A + 0.5*I, rows
renormalised, heads fused by mean.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(HELP)

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


class ClassPicker(ModalScreen[int | None]):
    """Type to filter class names (fuzzy); Enter chooses, Esc cancels."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, classes: list[str], current: int) -> None:
        super().__init__()
        self.class_names, self.current = classes, current

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Static("target class: type to search, Enter to choose", classes="picker-title")
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
        ol = self.query_one(OptionList)
        if ol.highlighted is not None and ol.option_count:
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
    """Completes file system paths as you type."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        p = Path(os.path.expanduser(value))
        folder, stem = (p, "") if value.endswith(os.sep) else (p.parent, p.name)
        try:
            names = sorted(e.name + (os.sep if e.is_dir() else "") for e in folder.iterdir()
                           if e.name.startswith(stem) and not e.name.startswith("."))
        except OSError:
            return None
        if not names:
            return None
        return value + names[0][len(stem):]


class OpenImage(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Static("open image: a path (Tab/→ accepts the completion), Enter to open", classes="picker-title")
            yield Input(value=self.start, suggester=PathSuggester(), id="image-path")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
