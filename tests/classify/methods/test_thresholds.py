"""Pseudo-label selection rules: exact oracles on hand-made tables, NumPy and torch alike."""
import numpy as np
import pytest
import torch

from classify.methods.thresholds import ClassAwareThresholds, balanced_topk_mask, class_counts, fixed_threshold_mask

# 4 rows x 3 classes: arg-max classes 0, 1, 2, 0 with confidences .95, .85, .92, .88
P = np.array([[0.95, 0.03, 0.02],
              [0.10, 0.85, 0.05],
              [0.04, 0.04, 0.92],
              [0.88, 0.07, 0.05]])


def test_fixed_threshold_mask_numpy_and_torch():
    assert fixed_threshold_mask(P, 0.9).tolist() == [True, False, True, False]
    assert fixed_threshold_mask(P, 0.85).tolist() == [True, True, True, True]  # inclusive
    t = fixed_threshold_mask(torch.tensor(P, dtype=torch.float32), 0.9)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bool and t.tolist() == [True, False, True, False]
    assert fixed_threshold_mask(P, 0.98).sum() == 0  # FixMatch-style 0.98 keeps nothing here


@pytest.mark.parametrize("bad, message", [(1.5, "tau must be in"), (-0.1, "tau must be in")])
def test_fixed_threshold_rejects_bad_tau(bad, message):
    with pytest.raises(ValueError, match=message):
        fixed_threshold_mask(P, bad)


def test_proba_must_be_2d():
    with pytest.raises(ValueError, match="must be 2-D"):
        fixed_threshold_mask(P[0], 0.5)


# Hand computation, tau0 = 0.9, eps = 0.04, ema = 0.9, target r = (.6, .25, .15), p starts at r:
# step 1: tau (.90 .90 .90) keeps rows 0, 2 -> counts (1 0 1), f = (.5 0 .5)
#         p = .9 r + .1 f = (.59 .225 .185); sign(p - r) = (- - +) -> tau (.86 .86 .94)
# step 2: keeps rows 0, 3 -> counts (2 0 0), f = (1 0 0)
#         p = (.631 .2025 .1665); sign = (+ - +) -> tau (.90 .82 .98)
# step 3: keeps rows 0, 1 -> counts (1 1 0), f = (.5 .5 0)
#         p = (.6179 .23225 .14985); sign = (+ - -) -> tau (.94 .78 .94)
EXPECTED = [
    ([True, False, True, False], [0.59, 0.225, 0.185], [0.86, 0.86, 0.94]),
    ([True, False, False, True], [0.631, 0.2025, 0.1665], [0.90, 0.82, 0.98]),
    ([True, True, False, False], [0.6179, 0.23225, 0.14985], [0.94, 0.78, 0.94]),
]


@pytest.mark.parametrize("as_torch", [False, True])
def test_class_aware_thresholds_follow_the_update_rule_step_by_step(as_torch):
    thr = ClassAwareThresholds(3, tau0=0.9, ema=0.9, eps=0.04, target=[0.6, 0.25, 0.15])
    proba = torch.tensor(P) if as_torch else P
    for mask, shares, taus in EXPECTED:
        got = thr.step(proba)
        assert (got.tolist() if as_torch else got.tolist()) == mask
        np.testing.assert_allclose(thr.shares, shares, atol=1e-12)
        np.testing.assert_allclose(thr.thresholds, taus, atol=1e-12)
    assert thr.n_steps == 3


def test_class_aware_state_roundtrip_and_bounds():
    thr = ClassAwareThresholds(3, tau0=0.9, eps=0.04, target=[0.6, 0.25, 0.15])
    thr.step(P)
    clone = ClassAwareThresholds(3)
    clone.load_state_dict(thr.state_dict())
    np.testing.assert_array_equal(clone.mask(P), thr.mask(P))
    low = ClassAwareThresholds(2, tau0=0.5, eps=0.3, tau_min=0.4, tau_max=0.6)
    low.update([0, 0])  # nothing kept: every share falls below target, every threshold goes down to the bound
    np.testing.assert_allclose(low.thresholds, [0.4, 0.4])


def test_class_aware_lowers_a_starved_class_until_it_is_selected():
    rng = np.random.default_rng(0)
    n = 300
    idx = np.repeat([0, 1, 2], n // 3)
    conf = np.where(idx == 2, rng.uniform(0.6, 0.8, n), rng.uniform(0.97, 1.0, n))  # class 2: never above 0.8
    proba = np.full((n, 3), 0.0)
    proba[np.arange(n), idx] = conf
    proba[np.arange(n), (idx + 1) % 3] = 1 - conf
    thr = ClassAwareThresholds(3, tau0=0.98)
    assert class_counts(proba, thr.mask(proba))[2] == 0
    for _ in range(400):
        thr.step(proba)
    counts = class_counts(proba, thr.mask(proba))
    assert counts[2] > 0 and thr.thresholds[2] < 0.8 < thr.thresholds[0]


@pytest.mark.parametrize("bad, message", [
    (dict(ema=1.0), "ema must be in"), (dict(target=[1, 0]), "target must be 3"), (dict(tau_min=0.9, tau_max=0.5),
                                                                                   "tau_min <= tau_max")])
def test_class_aware_rejects_bad_params(bad, message):
    with pytest.raises(ValueError, match=message):
        ClassAwareThresholds(3, **bad)


def test_balanced_topk_gives_every_class_exactly_k_most_confident():
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(4) * 0.5, size=400)
    idx, conf = proba.argmax(1), proba.max(1)
    assert np.bincount(idx, minlength=4).min() >= 10
    mask = balanced_topk_mask(proba, 10)
    assert np.bincount(idx[mask], minlength=4).tolist() == [10, 10, 10, 10]
    for c in range(4):  # the kept rows of each class are its 10 most confident
        cand = np.flatnonzero(idx == c)
        assert set(np.flatnonzero(mask & (idx == c))) == set(cand[np.argsort(-conf[cand], kind="stable")[:10]])
    t = balanced_topk_mask(torch.tensor(proba), 10)
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), mask)


def test_balanced_topk_short_class_keeps_all_and_per_class_k():
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]])  # class 1 has a single candidate
    assert balanced_topk_mask(proba, 2).tolist() == [True, True, False, True]
    assert balanced_topk_mask(proba, [1, 0]).tolist() == [True, False, False, False]
    ties = np.array([[0.6, 0.4]] * 3)
    assert balanced_topk_mask(ties, 2).tolist() == [True, True, False]  # ties go to the earlier rows
    with pytest.raises(ValueError, match="non-negative int"):
        balanced_topk_mask(proba, -1)


def test_pool_selection_uses_the_most_lenient_threshold_of_the_ema_window():
    """On a static pool the last step alone drops rows whenever a class ends on an upswing of its threshold."""
    from classify.methods.thresholds import classaware_pool_mask

    rng = np.random.default_rng(0)
    p = np.exp(rng.normal(size=(40, 3)) * 2)
    p /= p.sum(axis=1, keepdims=True)
    target = np.array([5.0, 4.0, 3.0])
    last = ClassAwareThresholds(3, tau0=0.5, target=target)
    for _ in range(1000):
        last.step(p)
    mask, details = classaware_pool_mask(p, ClassAwareThresholds(3, tau0=0.5, target=target), 1000)
    assert np.all(mask >= last.mask(p)) and mask.sum() > last.mask(p).sum()
    assert np.all(np.array(details["thresholds"]) <= last.thresholds + 1e-6)
