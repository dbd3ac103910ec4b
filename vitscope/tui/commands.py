"""The command palette: every action of the current screen, named by what it does."""
from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


class ScreenCommands(Provider):
    """Entries come from the screen's ``palette_entries()`` (its bindings and the pane registry)."""

    def _entries(self) -> list[tuple[str, str, str]]:
        screen = self.screen
        return screen.palette_entries() if hasattr(screen, "palette_entries") else []

    async def discover(self) -> Hits:
        for name, help_text, action in self._entries():
            yield DiscoveryHit(name, partial(self.screen.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, action in self._entries():
            score = matcher.match(f"{name} {help_text}")
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self.screen.run_action, action), help=help_text)
