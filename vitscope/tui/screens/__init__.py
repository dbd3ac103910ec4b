"""One Screen per job: the inspector now; the browser, training and compare screens build on it."""
from .base import VitscopeScreen
from .inspector import InspectorScreen, Options

__all__ = ["VitscopeScreen", "InspectorScreen", "Options"]
