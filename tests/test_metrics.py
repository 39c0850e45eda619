"""Metrics against hand-computed confusion counts, including empty-mask edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from hemoseg_edge import metrics as m


def test_counts_and_metrics_by_hand():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    truth = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], bool)
    c = m.confusion(pred, truth)
    assert c == m.Counts(tp=2, fp=1, fn=2, tn=3)
    assert m.dice(c) == pytest.approx(4 / 7)
    assert m.iou(c) == pytest.approx(2 / 5)
    assert m.precision(c) == pytest.approx(2 / 3)
    assert m.sensitivity(c) == pytest.approx(2 / 4)
    assert m.specificity(c) == pytest.approx(3 / 4)
    assert m.accuracy(c) == pytest.approx(5 / 8)


def test_valid_region_restricts_counting():
    pred = np.ones((2, 2), bool)
    truth = np.zeros((2, 2), bool)
    valid = np.array([[1, 0], [0, 0]], bool)
    assert m.confusion(pred, truth, valid) == m.Counts(0, 1, 0, 0)


def test_empty_cases():
    empty = np.zeros((3, 3), bool)
    c = m.confusion(empty, empty)
    assert (m.dice(c), m.iou(c), m.precision(c), m.sensitivity(c)) == (1.0, 1.0, 1.0, 1.0)
    miss = m.confusion(empty, np.eye(3, dtype=bool))  # nothing predicted, lesions present
    assert m.dice(miss) == 0.0 and m.precision(miss) == 0.0 and m.sensitivity(miss) == 0.0
    false_alarm = m.confusion(np.eye(3, dtype=bool), empty)
    assert m.dice(false_alarm) == 0.0 and m.sensitivity(false_alarm) == 1.0
    assert m.specificity(false_alarm) == pytest.approx(6 / 9)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        m.confusion(np.zeros((2, 2)), np.zeros((2, 3)))


def test_counts_add():
    assert m.Counts(1, 2, 3, 4) + m.Counts(1, 1, 1, 1) == m.Counts(2, 3, 4, 5)


def exact_average_precision(prob: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-prob, kind="stable")
    t = truth[order]
    tp = np.cumsum(t)
    precision = tp / np.arange(1, t.size + 1)
    return float((precision * t).sum() / t.sum())


def test_histogram_aupr_matches_exact_average_precision():
    rng = np.random.default_rng(0)
    truth = rng.random(20000) < 0.05
    prob = np.clip(rng.normal(0.3 + 0.4 * truth, 0.15), 0, 1).astype(np.float32)
    h = m.PrHistogram(bins=1000)
    h.add(prob[:10000], truth[:10000])  # accumulates across calls
    h.add(prob[10000:], truth[10000:])
    assert h.aupr() == pytest.approx(exact_average_precision(prob, truth), abs=0.01)
    for t in (0.3, 0.5, 0.72):
        assert h.counts_at(t) == m.confusion(prob >= t, truth)


def test_best_threshold_finds_separating_value():
    truth = np.array([0, 0, 0, 1, 1], bool)
    prob = np.array([0.1, 0.2, 0.3, 0.8, 0.9], np.float32)
    d05, best, thr = m.best_threshold_dice([prob], [truth])
    assert d05 == 1.0 and best == 1.0 and 0.3 < thr <= 0.8


def test_threshold_for_sensitivity():
    scores = [0.9, 0.2, 0.7, 0.4, 0.8, 0.6, 0.5, 0.3, 0.95, 0.1] * 2  # 20 positives
    t = m.threshold_for_sensitivity(scores, 0.95)
    # one miss of 20 is allowed, but both lowest scores are 0.1: the threshold stays there
    assert t == 0.1
    assert m.threshold_for_sensitivity(scores, 0.5) == 0.6  # 10 of 20 scores are >= 0.6
    assert np.mean(np.asarray(scores) >= 0.6) == 0.5
    assert np.mean(np.asarray(scores) >= 0.7) < 0.5
    with pytest.raises(ValueError):
        m.threshold_for_sensitivity([], 0.95)


def test_operating_point_written_short_still_keeps_the_images_it_counted():
    """Saturating scores: rounded to nearest, 0.99986 would give 0.9999 and miss itself."""
    scores = [0.99986, 0.999951, 0.99999994, 1.0, 0.9999992]
    t4 = m.threshold_for_sensitivity(scores, 0.95, decimals=4)
    t6 = m.threshold_for_sensitivity(scores, 0.95, decimals=6)
    assert t4 == 0.9998 and t6 == 0.99986
    for t in (t4, t6):
        assert np.mean(np.asarray(scores) >= t) == 1.0
    assert m.threshold_for_sensitivity([0.5, 0.25], 0.95, decimals=3) == 0.25  # exact stays


def test_eleven_point_trapezoid_aupr_by_hand():
    """Perfect separation: precision 1 at every recall -> 1.0; and a hand-made case."""
    h = m.PrHistogram(1000)
    h.add(np.array([0.95, 0.85, 0.05, 0.15]), np.array([True, True, False, False]))
    assert h.aupr_trapezoid() == pytest.approx(1.0)
    h = m.PrHistogram(1000)
    # positives at 0.55 and 0.95, negatives at 0.75 and 0.05
    h.add(np.array([0.55, 0.95, 0.75, 0.05]), np.array([True, True, False, False]))
    # thresholds 0.0: r=1, p=0.5; 0.1..0.5: r=1, p=2/3; 0.6, 0.7: r=.5, p=.5;
    # 0.8, 0.9: r=.5, p=1; 1.0: r=0, p=1 (empty). Recall changes only 0.5->0.6 and 0.9->1.0:
    want = 0.5 * (2 / 3 + 0.5) / 2 + 0.5 * (1.0 + 1.0) / 2
    assert h.aupr_trapezoid() == pytest.approx(want)


def test_roc_auc_and_points_by_hand():
    pos, neg = [0.9, 0.8, 0.4], [0.7, 0.4, 0.1]
    # pairs (pos > neg): 0.9 beats 3, 0.8 beats 3, 0.4 beats 0.1 and ties 0.4 -> (3+3+1.5)/9
    assert m.roc_auc(pos, neg) == pytest.approx(7.5 / 9)
    assert m.roc_auc([1.0], [0.0]) == 1.0 and m.roc_auc([0.0], [1.0]) == 0.0
    pts = m.roc_points(pos, neg)
    assert pts[0] == (0.9, pytest.approx(1 / 3), 1.0)
    assert (0.4, 1.0, pytest.approx(1 / 3)) in pts  # the tie at 0.4 counts as positive
    assert pts[-1] == (0.1, 1.0, 0.0)
    with pytest.raises(ValueError):
        m.roc_auc([], [0.5])
