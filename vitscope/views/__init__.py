"""The view layer shared by the TUI and ``vitscope export``: a Session, the frozen ViewState and the
pane registry."""
from .panes import PANES, Pane, PaneOutput, Scale, Table
from .session import Session
from .state import FUSIONS, VIEWS, ViewState

__all__ = ["PANES", "Pane", "PaneOutput", "Scale", "Table", "Session", "ViewState", "VIEWS", "FUSIONS"]
