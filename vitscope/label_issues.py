"""Suspected label errors by confident learning (Northcutt, Jiang & Chuang, JAIR 2021).

Implemented here, in numpy, rather than by importing cleanlab: cleanlab installs cleanly but pulls
pandas and scikit-learn (about 60 MB, and 0.9 s of imports) into a tool whose main install must stay
lean, and the two pieces we need are a few lines each. The tests check both against cleanlab 2.x on
the same probabilities (``cleanlab.rank.get_label_quality_scores(method="self_confidence")`` and
``cleanlab.filter.find_label_issues(filter_by="confident_learning")``).

- Ranking: the *self-confidence* label quality, p(given label | x) from out-of-sample predicted
  probabilities; the lower it is, the more likely the given label is wrong. vitscope reports
  ``score = 1 - self-confidence`` so that the list reads best (most suspect) first.
- Flagging: an example is a *label issue* when it falls on an off-diagonal of the confident joint:
  some class j other than its given label has p_j >= t_j, where t_j is the mean p_j over the examples
  labelled j (the per-class confident threshold); with several such classes the most probable wins.
  That class is the *suggested* label. As in cleanlab, an example whose most probable class is its
  given label (within 1e-6) is never flagged, even when another class clears its threshold.

Both need probabilities from a model that never trained on those images: a held-out model, or
``vitscope crossval``. In-sample probabilities make every label look right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLD_FLOOR = 2e-6  # cleanlab's CONFIDENT_THRESHOLDS_LOWER_BOUND
TOLERANCE = 1e-6  # cleanlab's comparison slack in the confident joint

SCORE_DEFINITION = ("score = 1 - p(given label), out-of-sample (confident learning's self-confidence, inverted: "
                    "higher is more suspect)")


def self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """p(given label) per example: cleanlab's self-confidence label quality score (low = suspect)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.asarray(probs)[np.arange(len(labels)), labels]


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """t_j: the mean p_j over examples labelled j (2 for a class without examples: never confident)."""
    labels = np.asarray(labels, dtype=np.int64)
    C = probs.shape[1]
    sums = np.zeros(C)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    counts = np.bincount(labels, minlength=C)
    t = np.where(counts > 0, sums / np.maximum(counts, 1), 2.0)
    return np.clip(t, THRESHOLD_FLOOR, None)


@dataclass(frozen=True)
class LabelIssues:
    """Per example: ``score`` (1 - self-confidence), ``is_issue`` (confident-joint off-diagonal) and
    ``suggested`` (the confidently predicted class; the argmax where no class is confident)."""

    score: np.ndarray  # float32 [N]
    is_issue: np.ndarray  # bool [N]
    suggested: np.ndarray  # int64 [N]
    thresholds: np.ndarray  # float [C]

    def ranked(self, only_issues: bool = True) -> np.ndarray:
        """Positions, most suspect first (ties by position, so the order is stable)."""
        pos = np.flatnonzero(self.is_issue) if only_issues else np.arange(len(self.score))
        return pos[np.argsort(-self.score[pos], kind="stable")]


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> LabelIssues:
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities {probs.shape} do not match {len(labels)} labels")
    t = confident_thresholds(labels, probs)
    confident = probs >= t - TOLERANCE
    n_conf = confident.sum(1)
    guess = np.where(n_conf > 1, probs.argmax(1), confident.argmax(1))
    suggested = np.where(n_conf > 0, guess, probs.argmax(1))
    # cleanlab's last filter (count._reduce_issues): a prediction that agrees with the given label is no issue,
    # even when a low-threshold class is also "confident" (the given label then falls just short of its own t)
    boosted = probs.copy()
    boosted[np.arange(len(labels)), labels] += TOLERANCE
    is_issue = (n_conf > 0) & (guess != labels) & (boosted.argmax(1) != labels)
    score = (1.0 - self_confidence(labels, probs)).astype(np.float32)
    return LabelIssues(score=score, is_issue=is_issue, suggested=suggested.astype(np.int64), thresholds=t)


def issue_records(issues: LabelIssues, index: np.ndarray, labels: np.ndarray, classes: list[str],
                  limit: int | None = None) -> list[dict]:
    """``[{index, given, suggested, score}]`` best first (most suspect), for JSON output."""
    order = issues.ranked()
    if limit is not None:
        order = order[:limit]
    return [{"index": int(index[i]), "given": classes[int(labels[i])], "suggested": classes[int(issues.suggested[i])],
             "score": round(float(issues.score[i]), 6)} for i in order]
