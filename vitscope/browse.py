"""The misclassification browser's view model: which rows of a sweep are listed, in which order.

A :class:`BrowseState` (frozen, like the inspector's ViewState) names a list (all images with the
mistakes first, the most confident mistakes, the least confident correct images, the highest loss,
suspected label errors, or one confusion-matrix cell), filters (true class, predicted class, wrong
only) and an optional sort column. :class:`Browse` turns it into an array of row positions with
numpy only, so a 50,000-row sweep re-sorts in milliseconds; the screen draws just the visible rows.
No Textual here.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .sweep import SweepResult

# (key, header, what it is) in display order; the sort keys 1..8 follow this order
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("index", "index", "index in the dataset file"),
    ("true", "true", "the given (true) label"),
    ("pred", "predicted", "the predicted class"),
    ("p_pred", "p(pred)", "probability of the predicted class"),
    ("p_true", "p(true)", "probability of the given label"),
    ("loss", "loss", "cross-entropy loss of the given label"),
    ("margin", "margin", "p(true) - max p(other class); negative for a mistake"),
    ("issue", "issue", "label-issue score: 1 - p(given label), out-of-sample (confident learning)"),
)
COLUMN_KEYS = tuple(c[0] for c in COLUMNS)
DESCENDING_FIRST = {"p_pred", "loss", "issue"}  # the first press of these sorts largest first

# name -> (title, filter, default sort column, descending)
LISTS: dict[str, tuple[str, str, str, bool]] = {
    "all": ("all images, misclassified first (highest loss first)", "all", "", True),
    "mistakes": ("most confident mistakes", "wrong", "p_pred", True),
    "unsure": ("least confident correct images", "correct", "p_true", False),
    "loss": ("highest loss", "all", "loss", True),
    "issues": ("suspected label errors, most suspect first", "issues", "issue", True),
    "cell": ("one confusion-matrix cell", "cell", "loss", True),
}


@dataclass(frozen=True)
class BrowseState:
    list: str = "all"
    sort: str = ""  # a COLUMN_KEYS entry overriding the list's own order; "" = the list's order
    descending: bool = True
    true_class: int | None = None
    pred_class: int | None = None
    wrong_only: bool = False
    cell: tuple[int, int] | None = None  # (true, predicted) for the "cell" list

    def with_(self, **changes: Any) -> "BrowseState":
        return replace(self, **changes)


class Browse:
    """Rows of one sweep under a BrowseState (results cached for the last few states)."""

    def __init__(self, result: SweepResult) -> None:
        self.result = result
        self.issues = result.label_issues  # None without every class probability
        self._cache: dict[BrowseState, np.ndarray] = {}
        n = result.n
        self._columns: dict[str, np.ndarray] = {
            "index": result.index, "true": result.label, "pred": result.pred, "p_pred": result.p_pred,
            "p_true": result.p_true if result.p_true is not None else np.full(n, np.nan, np.float32),
            "loss": result.loss,
            "margin": result.margin if result.margin is not None else np.full(n, np.nan, np.float32),
            "issue": self.issues.score if self.issues is not None else np.full(n, np.nan, np.float32),
        }
        # class columns sort by name, not by class index
        name_rank = np.argsort(np.argsort(np.array(result.classes, dtype=object), kind="stable"), kind="stable")
        self._sort_values = dict(self._columns, true=name_rank[result.label], pred=name_rank[result.pred])

    @property
    def has_issues(self) -> bool:
        return self.issues is not None

    def rows(self, state: BrowseState) -> np.ndarray:
        """Row positions (into the sweep's arrays) listed under ``state``, in display order."""
        got = self._cache.get(state)
        if got is None:
            got = self._rows(state)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[state] = got
        return got

    def _rows(self, s: BrowseState) -> np.ndarray:
        r = self.result
        _, which, default_sort, default_desc = LISTS[s.list]
        keep = np.ones(r.n, dtype=bool)
        if which == "wrong" or s.wrong_only:
            keep &= ~r.correct
        if which == "correct":
            keep &= r.correct
        if which == "issues":
            keep &= self.issues.is_issue if self.issues is not None else False
        if which == "cell" and s.cell is not None:
            keep &= (r.label == s.cell[0]) & (r.pred == s.cell[1])
        if s.true_class is not None:
            keep &= r.label == s.true_class
        if s.pred_class is not None:
            keep &= r.pred == s.pred_class
        pos = np.flatnonzero(keep)
        key, desc = (s.sort, s.descending) if s.sort else (default_sort, default_desc)
        if not key:  # mistakes first, each group by loss, highest first; ties keep dataset order
            order = np.lexsort((-r.loss[pos], r.correct[pos]))
            return pos[order]
        v = self._sort_values[key][pos]
        v = np.where(np.isnan(v), -np.inf, v) if v.dtype.kind == "f" else v
        order = np.argsort(-v if desc else v, kind="stable")
        return pos[order]

    def describe(self, s: BrowseState) -> str:
        """What is listed, in words (the screen's title line)."""
        title = LISTS[s.list][0]
        classes = self.result.classes
        if s.list == "cell" and s.cell is not None:
            title = f"true {classes[s.cell[0]]}, predicted {classes[s.cell[1]]}"
        parts = [title]
        if s.true_class is not None:
            parts.append(f"true = {classes[s.true_class]}")
        if s.pred_class is not None:
            parts.append(f"predicted = {classes[s.pred_class]}")
        if s.wrong_only and LISTS[s.list][1] not in ("wrong", "cell"):
            parts.append("wrong only")
        if s.sort:
            header = dict((k, h) for k, h, _ in COLUMNS)[s.sort]
            parts.append(f"sorted by {header} {'↓' if s.descending else '↑'}")
        return "  ·  ".join(parts)

    def to_csv(self, rows: np.ndarray) -> str:
        """The listed rows as CSV: the columns as shown, then correct and the suggested label."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*COLUMN_KEYS, "correct", "suggested"])
        classes = self.result.classes
        for pos in np.asarray(rows).tolist():
            sug = classes[int(self.issues.suggested[pos])] if self.issues is not None else ""
            w.writerow([*(self.cell_text(pos, k) for k in COLUMN_KEYS),
                        str(bool(self.result.correct[pos])).lower(), sug])
        return buf.getvalue()

    def cell_text(self, pos: int, key: str) -> str:
        r = self.result
        if key == "index":
            return str(int(r.index[pos]))
        if key in ("true", "pred"):
            return r.classes[int(self._columns[key][pos])]
        v = float(self._columns[key][pos])
        if np.isnan(v):
            return "–"
        return f"{v:.3f}" if key != "loss" else f"{v:.2f}"
