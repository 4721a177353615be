"""Inspection metrics against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ear_stream.inspect.metrics import aupro, f1_max, rates_at
from ear_stream.inspect.thresholds import f1_optimal


def test_f1_max_by_hand():
    # scores 0.9 (bad) 0.8 (good) 0.7 (bad) 0.1 (good): flag >0.75 → TP1 FP1 FN1 → F1 0.5;
    # flag >0.65 → TP2 FP1 FN0 → F1 = 4/5 = 0.8 (the best); flag all → TP2 FP2 → 2/3
    labels = np.array([True, False, True, False])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    f1, t = f1_max(labels, scores)
    assert f1 == pytest.approx(0.8)
    assert 0.1 < t < 0.7  # any cut between the lowest flagged and the next score down
    assert f1_optimal(scores, labels)[1] == pytest.approx(0.8)
    assert np.isnan(f1_max(np.array([True, True]), np.array([0.1, 0.2]))[0])


def test_false_reject_and_escape_rates_by_hand():
    labels = np.array([False, False, False, False, True, True])
    scores = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.4])
    r = rates_at(labels, scores, 0.5)
    assert r["false_reject_rate"] == pytest.approx(1 / 4) and r["escape_rate"] == pytest.approx(1 / 2)


def test_aupro_by_hand():
    # one image, gt [1 1 0 0], scores [0.9 0.1 0.8 0.2]: PRO 0.5 from FPR 0 to 0.5 → AUPRO@0.3 = 0.5
    assert aupro([np.array([[1, 1, 0, 0]])], [np.array([[0.9, 0.1, 0.8, 0.2]])], 0.3) == pytest.approx(0.5)
    # perfect separation: PRO reaches 1 at FPR 0
    assert aupro([np.array([[1, 0, 0]])], [np.array([[0.9, 0.2, 0.1]])], 0.3) == pytest.approx(1.0)
    # two components of different sizes weigh the same: the small one (1 px) found first → PRO 0.5 at FPR 0,
    # then a good pixel (FPR 1/3), then the big one → PRO 1 at FPR 1/3: area to 0.3 = 0.3·0.5 → 0.5
    gt = np.array([[1, 0, 1, 1, 0, 0]])
    amap = np.array([[0.9, 0.8, 0.5, 0.5, 0.1, 0.2]])
    assert aupro([gt], [amap], 0.3) == pytest.approx(0.5)
    # a good image only adds to the false positives: its pixel above everything pushes PRO right
    good = np.zeros((1, 2))
    both = aupro([np.array([[1, 0]]), good], [np.array([[0.5, 0.1]]), np.array([[0.9, 0.0]])], 0.3)
    # good pixels 3: FPR 1/3 before the defect is found → PRO 0 on [0, 0.3]
    assert both == pytest.approx(0.0)
    assert np.isnan(aupro([np.zeros((2, 2))], [np.ones((2, 2))]))
