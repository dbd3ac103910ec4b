"""Widgets draw arrays they are given and post messages upward; no analysis logic here."""
from .colorbar import ColorBar
from .headgrid import HeadGrid
from .overview import OverviewGrid
from .picture import HalfCellImage
from .prediction import PredictionPanel
from .textline import TextLine

__all__ = ["ColorBar", "HeadGrid", "OverviewGrid", "HalfCellImage", "PredictionPanel", "TextLine"]
