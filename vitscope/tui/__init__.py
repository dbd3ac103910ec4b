"""The inspector TUI (Textual). Nothing outside this package imports Textual or Rich."""
