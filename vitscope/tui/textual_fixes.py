"""Guards around Textual bugs that random keys found (tests/test_tui_fuzz.py), each naming its upstream issue.

Drop one when the Textual we require fixes it: the fuzz tests and the small tests beside them say whether it
still matters.
"""
from __future__ import annotations

from typing import Any

from textual.await_complete import AwaitComplete
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, OptionList


def has_rows(option_list: OptionList) -> bool:
    """Whether a page move can be computed. OptionList builds its line cache only while it has an area
    (Textual #5794: ``_update_lines`` returns early for a zero-size region), so on a terminal too small to give
    the list a row, or before a just-shown list is laid out, ``_move_page`` looks the highlighted option up in
    an empty cache and raises KeyError (the same crash downstream: kagan-sh/kagan-legacy#31). With no rows
    there is no page to move by."""
    return bool(option_list.scrollable_content_region)


class DismissOnce:
    """For modal screens: dismissing a screen that is no longer on top does nothing. Textual's
    ``Screen.dismiss`` pops whatever screen is on top (Textual #2575), so when two Enters (or an Enter
    and a click) arrive together, the second answer would pop the screen under the modal (the inspector,
    leaving a blank app) or, with nothing left to pop, raise ScreenStackError."""

    def dismiss(self, result: Any = None) -> AwaitComplete:
        if not self.is_active:  # type: ignore[attr-defined]
            return AwaitComplete.nothing()
        return super().dismiss(result)  # type: ignore[misc]


class Palette(DismissOnce, CommandPalette):
    """Textual's command palette with the guards above: one command per burst of Enters (its submit
    handler dismisses and then runs the chosen command, so a second Enter queued behind the first would run
    it again and dismiss the screen under the palette), and PgUp/PgDn safe while its list has no rows."""

    def _on_input_submitted(self, event: Input.Submitted) -> None:
        self._answered_already(event)

    def _on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._answered_already(event)

    def _answered_already(self, event: Any) -> None:
        # handlers of this class run before the base class's; prevent_default keeps the message from them
        if not self.is_active:
            event.stop()
            event.prevent_default()

    def _action_command_list(self, action: str) -> None:
        if action in ("page_up", "page_down") and not has_rows(self.query_one(CommandList)):
            return
        super()._action_command_list(action)
