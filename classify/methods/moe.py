"""Two-level mixture of experts: a gate picks the superclass, one expert per superclass picks the class.

Superclasses are given, or discovered so that classes a base classifier confuses share a superclass.
The gate is trained class-balanced: an unweighted gate collapses onto the superclass holding most labeled rows,
starving every other expert.

With few labels a gate and experts fitted on the labeled rows alone are each weaker than one flat model. So by
default a flat semi-supervised model (``selftrain``) pseudo-labels the unlabeled rows, gate and experts learn from
the labeled *and* pseudo-labeled rows of their superclass, and the prediction falls back to the flat model wherever
the gate is unsure.

Defaults (pseudo-label every pooled row the flat model labels, class-balanced; gate threshold 0.7; flat weight 0.5)
were chosen by nested CV on development draws, never test rows (``python -m benchmarks.sweep --grid moe``); the
measurements, and how much the hierarchy adds to the flat model it learns from, are in ``benchmarks/README.md``.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.dummy import DummyClassifier
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.utils.validation import check_is_fitted, has_fit_parameter, validate_data

from classify.methods.base import METHOD, FewShotClassifier, accepts_unlabeled, resolve_estimator
from classify.methods.features import align_proba, checked_labeled_mask, cv_splits
from classify.methods.linear import LinearProbe
from classify.methods.selftrain import LogisticHead, SelfTraining
from classify.methods.registry import register_method
from classify.methods.thresholds import balanced_topk_mask
from store.validation import NONE, Int, Options, Real, UserError

log = logging.getLogger(__name__)

_UNLABELED = ("pseudo", "ignore", "gate")


@register_method("moe")
class MixtureOfExperts(FewShotClassifier):
    """Gate over superclasses × one expert per superclass, falling back to a flat model where the gate is unsure.

    Discovery (``superclasses=None``): out-of-fold predictions of ``base`` on the labeled rows
    (``cross_val_predict``) give a row-normalised confusion matrix R; the symmetrised confusion
    ``A = (R + R.T) / 2`` is a class affinity and average-linkage agglomerative clustering on the
    distance ``1 - A`` groups classes that are often confused. With ``n_superclasses=None`` groups merge
    while their average mutual confusion rate is at least ``confusion_threshold`` (classes never confused
    stay singletons); otherwise the tree is cut into ``n_superclasses`` groups.

    Unlabeled rows (``y = -1``), by default (``unlabeled="pseudo"``): the ``flat`` model, fitted on every row,
    labels them; per class the ``pseudo_share`` most confident of its share of the pool join the labeled rows, so
    the discovery confusions, the gate and every expert (on the rows of its superclass) also learn from them.
    ``"ignore"`` uses labeled rows only; ``"gate"`` passes the unlabeled rows (still ``-1``) to the gate, for a
    semi-supervised gate.

    Prediction: where the gate's top superclass probability reaches ``gate_threshold`` the answer is
    ``(1 - flat_weight) * hierarchy + flat_weight * flat``, elsewhere the flat model's alone, so an unsure gate
    cannot send a row to the wrong expert. ``gate_threshold=0, flat_weight=0`` is the pure hierarchy.

    Parameters
    ----------
    base : estimator or registered name, default=None
        Classifier whose cross-validated confusions define the superclasses; None = ``LinearProbe()``.
    superclasses : dict, list of lists, str or path, default=None
        ``{name: [class labels]}``, a list of label lists, or a JSON file holding either. Every labeled
        class must appear exactly once. None discovers them.
    n_superclasses : int, default=None
        Number of superclasses to discover; None chooses it with ``confusion_threshold``.
    gate : estimator or registered name, default=None
        Classifier over superclasses (cloned); None = selftrain's ``LogisticHead()`` (``LinearProbe()``, which
        skips unlabeled rows, with ``unlabeled="gate"``). A single superclass gets a trivial gate
        (``DummyClassifier``).
    expert : estimator or registered name, default=None
        Classifier within one superclass, cloned for each; None = selftrain's ``LogisticHead()`` (each expert
        fits its own feature transform on its superclass's rows). A superclass of one class gets a trivial expert.
    flat : estimator or registered name, default=None
        The flat model: pseudo-labels the unlabeled rows and answers where the gate is unsure; None =
        ``SelfTraining()`` (``selftrain``). Fitted on every row, unlabeled ones included. Not fitted when
        ``unlabeled != "pseudo"`` and ``gate_threshold = flat_weight = 0``.
    pseudo_share : float in (0, 1], default=1.0
        Per class, this share of ``n_unlabeled / n_classes`` rows -- the most confident rows the flat model
        labels that class -- become pseudo-labeled rows (class-balanced: a fixed threshold starves the classes
        the model is least sure of).
    gate_threshold : float in [0, 1], default=0.7
        Rows whose top gate probability is below it get the flat model's answer.
    flat_weight : float in [0, 1], default=0.5
        Weight of the flat model in the answer of the other rows.
    class_weight : "balanced", "superclass" or None, default="balanced"
        Weighting of the gate's training rows (passed as ``sample_weight``, or as ``class_weight`` to a gate
        whose fit takes no sample weights; a gate with neither needs ``class_weight=None``).
        "balanced": balanced over this estimator's *classes* -- every class has the same total weight, so
        a superclass weighs in proportion to its number of classes whatever its row count. A superclass
        holding most rows because its classes have more labels cannot absorb the gate, and the gate's
        prior stays right for a class-balanced test set. "superclass": every superclass has the same
        total weight (sklearn's "balanced" on the gate's superclass labels); this raises the recall of
        small superclasses but, where the gate is unsure, favours classes of small superclasses (each
        gets ``1/S`` shared by few classes) -- measured to cost accuracy. None: every row weighs one.
    confusion_threshold : float in (0, 1], default=0.1
        Minimum average symmetrised confusion rate for merging groups during automatic discovery.
    cv : int, default=5
        Maximum folds of the discovery CV (adapted to the smallest class; with a class of a single
        labeled row there is no discovery and all classes form one superclass).
    unlabeled : "pseudo", "ignore" or "gate", default="pseudo"
        What unlabeled rows (``y = -1``) do: "pseudo" -- the flat model's class-balanced pseudo-labels train the
        gate and experts and the superclass discovery; "ignore" -- nothing (labeled rows only); "gate" -- they
        are passed, still -1, to a semi-supervised gate.
    random_state : int, default=0
        Seeds the discovery fold shuffle and the flat model.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    superclasses_ : list of list
        Class labels of each superclass.
    superclass_names_ : list of str
    superclass_of_ : ndarray of shape (n_classes,)
        Superclass index of each entry of ``classes_``.
    gate_ : fitted estimator over superclass indices ``0..S-1``
    experts_ : list of fitted estimators, one per superclass
    confusion_ : ndarray of shape (n_classes, n_classes) or None
        Out-of-fold confusion rates of ``base`` (row = true class), when superclasses were discovered; with
        pseudo-labels averaged with the flat model's mean probabilities on the rows it labels each class.
    flat_ : fitted estimator or None
    pseudo_counts_ : ndarray of shape (n_classes,)
        Pseudo-labeled rows per class (zeros unless ``unlabeled="pseudo"``).
    n_features_in_ : int
    """

    _parameter_constraints = {"base": [NONE, METHOD], "gate": [NONE, METHOD], "expert": [NONE, METHOD],
                              "flat": [NONE, METHOD], "pseudo_share": [Real(0, 1, low_open=True)],
                              "gate_threshold": [Real(0, 1)], "flat_weight": [Real(0, 1)],
                              "n_superclasses": [NONE, Int(1)],
                              "class_weight": [NONE, Options("balanced", "superclass")],
                              "confusion_threshold": [Real(0, 1, low_open=True)], "cv": [Int(2)],
                              "unlabeled": [Options(*_UNLABELED)]}

    def __init__(self, base=None, superclasses=None, n_superclasses=None, gate=None, expert=None, flat=None,
                 pseudo_share=1.0, gate_threshold=0.7, flat_weight=0.5, class_weight="balanced",
                 confusion_threshold=0.1, cv=5, unlabeled="pseudo", random_state=0):
        self.base = base
        self.superclasses = superclasses
        self.n_superclasses = n_superclasses
        self.gate = gate
        self.expert = expert
        self.flat = flat
        self.pseudo_share = pseudo_share
        self.gate_threshold = gate_threshold
        self.flat_weight = flat_weight
        self.class_weight = class_weight
        self.confusion_threshold = confusion_threshold
        self.cv = cv
        self.unlabeled = unlabeled
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, X, y):
        """Fit the flat model, pseudo-label, find the superclasses, then fit the gate and one expert per superclass."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        mask = checked_labeled_mask(y)
        self.classes_ = np.unique(y[mask])
        if len(self.classes_) < 2:
            raise UserError(f"moe needs labeled rows of at least 2 classes, got {len(self.classes_)} class; "
                             "label more rows (y = -1 marks unlabeled)")
        self.flat_ = self._fit_flat(X, y)
        Xt, yt, pseudo_proba = self._training_rows(X, y, mask)  # labeled rows, then pseudo-labeled ones
        n_labeled = int(mask.sum())

        self.confusion_ = None
        if self.superclasses is not None:
            groups, names = self._given_groups()
        else:
            groups = self._discover(Xt[:n_labeled], yt[:n_labeled], pseudo_proba)
            names = [f"superclass_{i}" for i in range(len(groups))]
        self.superclass_of_ = np.empty(len(self.classes_), dtype=np.intp)
        for s, g in enumerate(groups):
            self.superclass_of_[g] = s
        labels = self.classes_.tolist()  # plain Python labels
        self.superclasses_ = [[labels[i] for i in g] for g in groups]
        self.superclass_names_ = names
        s_idx = self.superclass_of_[np.searchsorted(self.classes_, yt)]  # (n_t,) superclass of each training row
        log.info("moe: %d classes in %d superclasses: %s", len(self.classes_), len(groups), self.superclasses_)

        self.gate_ = self._fit_gate(X, mask, Xt, s_idx, groups)
        self.experts_ = []
        for s, g in enumerate(groups):
            rows = s_idx == s
            if len(g) == 1:
                expert = DummyClassifier(strategy="prior")  # one class: P(expert = c) = 1
            else:
                expert = resolve_estimator(self.expert, LogisticHead)
            self.experts_.append(expert.fit(Xt[rows], yt[rows]))
        return self

    def _fit_flat(self, X, y):
        if self.unlabeled != "pseudo" and self.gate_threshold == 0 and self.flat_weight == 0:
            return None  # the pure hierarchy on labeled rows needs no flat model
        flat = resolve_estimator(self.flat, lambda: SelfTraining(random_state=self.random_state))
        return flat.fit(X, y)

    def _flat_proba(self, X) -> np.ndarray:
        """The flat model's probabilities (n, C) in float64, rows summing to one (a float32 model's sum to ~1e-7)."""
        F = align_proba(np.asarray(self.flat_.predict_proba(X), dtype=np.float64), self.flat_.classes_, self.classes_)
        return F / F.sum(axis=1, keepdims=True)

    def _training_rows(self, X, y, mask):
        """Labeled rows followed by the flat model's class-balanced pseudo-labeled rows: X (n_t, D), y (n_t,), and
        the flat model's probabilities of the pseudo-labeled rows (n_t - n_labeled, C)."""
        self.pseudo_counts_ = np.zeros(len(self.classes_), dtype=np.int64)
        if self.unlabeled != "pseudo" or mask.all():
            return X[mask], y[mask], np.zeros((0, len(self.classes_)))
        Xu = X[~mask]
        proba = self._flat_proba(Xu)  # (n_u, C)
        k = max(1, int(round(self.pseudo_share * len(Xu) / len(self.classes_))))
        keep = balanced_topk_mask(proba, k)  # (n_u,)
        pseudo = proba[keep].argmax(axis=1)  # class indices
        self.pseudo_counts_ = np.bincount(pseudo, minlength=len(self.classes_))
        return np.concatenate([X[mask], Xu[keep]]), np.concatenate([y[mask], self.classes_[pseudo]]), proba[keep]

    def _fit_gate(self, X, mask, Xt, s_idx, groups):
        if len(groups) == 1:
            return DummyClassifier(strategy="prior").fit(Xt, s_idx)  # P(gate = 0) = 1
        gate = resolve_estimator(self.gate, LinearProbe if self.unlabeled == "gate" else LogisticHead)
        if self.unlabeled == "gate" and not accepts_unlabeled(gate):
            raise UserError(f"unlabeled='gate' passes unlabeled rows (y = -1) to the gate, and "
                             f"{type(gate).__name__} would learn -1 as a superclass; use a gate that takes them "
                             "(a registered method such as 'selftrain' or 'labelprop') or unlabeled='pseudo'")
        fit_params = {}
        if self.class_weight is not None:
            rows = np.bincount(s_idx, minlength=len(groups)).astype(np.float64)  # training rows per superclass
            if self.class_weight == "superclass":
                share = np.full(len(groups), 1.0 / len(groups))  # equal total weight per superclass
            else:
                # equal total weight per class: superclass s gets the share |s| / C of the total weight
                sizes = np.array([len(g) for g in groups], dtype=np.float64)  # classes per superclass
                share = sizes / sizes.sum()
            w = share * rows.sum() / rows  # weight of one row of each superclass
            if has_fit_parameter(gate, "sample_weight"):
                fit_params["sample_weight"] = w[s_idx]
            elif "class_weight" in gate.get_params():
                gate.set_params(class_weight={s: float(w[s]) for s in range(len(groups))})
            else:
                raise UserError(f"the gate {type(gate).__name__} takes neither sample weights nor a class_weight "
                                 "parameter; use a gate that does (e.g. 'linear') or set class_weight=None")
        if self.unlabeled == "gate":  # the labeled rows (Xt) with the unlabeled ones, marked -1, for the gate
            s_all = np.full(X.shape[0], -1, dtype=np.intp)
            s_all[mask] = s_idx
            if "sample_weight" in fit_params:
                fit_params["sample_weight"] = np.ones(X.shape[0])  # unlabeled rows weigh one
                fit_params["sample_weight"][mask] = w[s_idx]
            return gate.fit(X, s_all, **fit_params)
        return gate.fit(Xt, s_idx, **fit_params)

    # ------------------------------------------------------------------ superclasses
    def _given_groups(self):
        spec = self.superclasses
        if isinstance(spec, (str, os.PathLike)):
            with open(spec, encoding="utf-8") as fh:  # FileNotFoundError names the path
                try:
                    spec = json.load(fh)
                except json.JSONDecodeError as err:
                    raise UserError(f"superclasses file {self.superclasses!s} is not valid JSON: {err}") from None
        if isinstance(spec, dict):
            names, members = [str(k) for k in spec], list(spec.values())
        elif isinstance(spec, (list, tuple)):
            names, members = [f"superclass_{i}" for i in range(len(spec))], list(spec)
        else:
            raise UserError("superclasses must be a dict {name: [class labels]}, a list of label lists, or a path "
                             f"to a JSON file of either; got {type(spec).__name__}")
        labels = self.classes_.tolist()
        seen: dict[int, str] = {}
        groups, kept_names, dropped = [], [], []
        for name, mem in zip(names, members):
            if isinstance(mem, (str, bytes)) or not hasattr(mem, "__iter__"):
                raise UserError(f"superclass {name!r} must list class labels, got {mem!r}")
            g = []
            for c in mem:
                if c not in labels:
                    dropped.append(c)
                    continue
                i = labels.index(c)
                if i in seen:
                    raise UserError(f"class {c!r} is in both superclass {seen[i]!r} and {name!r}; give each class "
                                     "exactly one superclass")
                seen[i] = name
                g.append(i)
            if g:
                groups.append(sorted(g))
                kept_names.append(name)
        if dropped:
            log.warning("superclasses list classes without labeled rows, ignored: %s", dropped)
        missing = [labels[i] for i in range(len(labels)) if i not in seen]
        if missing:
            raise UserError(f"labeled classes {missing} are in no superclass; add them to the superclasses mapping")
        return groups, kept_names

    def _discover(self, Xl, yl, pseudo_proba) -> list[list[int]]:
        """Superclass groups (class indices) from the confusions on the labeled rows and, with ``pseudo_proba`` (the
        flat model's probabilities (n_p, C) of the pseudo-labeled rows), on the rows it pseudo-labels."""
        n_classes = len(self.classes_)
        n_super = self.n_superclasses
        if n_super is not None:
            if n_super > n_classes:
                raise UserError(f"n_superclasses must be an integer in [1, {n_classes}] (the number of labeled "
                                 f"classes), got {n_super!r}")
            if n_super == 1:
                return [list(range(n_classes))]
            if n_super == n_classes:
                return [[i] for i in range(n_classes)]
        n_splits = cv_splits(yl, self.cv)
        if n_splits < 2:
            log.warning("a class has a single labeled row, so confusions cannot be cross-validated; "
                        "using one superclass (the expert alone)")
            return [list(range(n_classes))]
        if self.base is None:
            # Choose the probe's C once on all labeled rows, then cross-validate predictions at that C: the same
            # confusions as nesting the probe's own C search in every fold, at a fraction of the cost.
            base = LinearProbe(Cs=[LinearProbe(random_state=self.random_state).fit(Xl, yl).C_])
        else:
            base = resolve_estimator(self.base)
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
        pred = cross_val_predict(base, Xl, yl, cv=folds)  # (n_l,) out-of-fold predictions
        R = confusion_matrix(yl, pred, labels=self.classes_, normalize="true")  # (C, C) rate of i predicted as j
        if len(pseudo_proba):
            # The flat model's confusions on the rows it pseudo-labels: its mean probability of class j on the
            # rows labelled i (their truth is unknown, so its doubt stands in for an error rate).
            idx = pseudo_proba.argmax(axis=1)  # (n_p,) the pseudo-label of each row
            counts = np.bincount(idx, minlength=n_classes)
            soft = np.zeros((n_classes, n_classes))
            np.add.at(soft, idx, pseudo_proba)
            has = counts > 0
            R[has] = (R[has] + soft[has] / counts[has, None]) / 2.0
        self.confusion_ = R
        A = (R + R.T) / 2.0  # symmetric affinity: how often i and j are mistaken for each other
        D = 1.0 - A
        np.fill_diagonal(D, 0.0)
        if n_super is None:
            agg = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                          distance_threshold=1.0 - self.confusion_threshold + 1e-12)
        else:
            agg = AgglomerativeClustering(n_clusters=n_super, metric="precomputed", linkage="average")
        labels = agg.fit_predict(D)  # (C,)
        groups = [sorted(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels)]
        return sorted(groups, key=lambda g: g[0])

    # ------------------------------------------------------------------ predict
    def predict_proba(self, X) -> np.ndarray:
        """Shape (n, len(classes_)), rows sum to one: the hierarchy ``P(gate = s(c)) · P(expert_s = c)`` mixed with
        the flat model where the gate is sure (top probability >= ``gate_threshold``), the flat model elsewhere."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        n_super = len(self.experts_)
        G = align_proba(np.asarray(self.gate_.predict_proba(X), dtype=np.float64), self.gate_.classes_,
                        np.arange(n_super))  # (n, S)
        G /= G.sum(axis=1, keepdims=True)  # float64 rows summing to one (a float32 gate's sum to ~1e-7)
        P = np.zeros((X.shape[0], len(self.classes_)))  # (n, C)
        for s, expert in enumerate(self.experts_):
            cols = np.flatnonzero(self.superclass_of_ == s)
            keep = np.isin(expert.classes_, self.classes_)  # an expert may know classes beyond ours (zero-shot)
            E = align_proba(expert.predict_proba(X)[:, keep], np.asarray(expert.classes_)[keep], self.classes_)
            E = E[:, cols]  # (n, |s|) restricted to this superclass, renormalised below
            tot = E.sum(axis=1, keepdims=True)
            E = np.where(tot > 0, E / np.where(tot > 0, tot, 1.0), 1.0 / len(cols))
            P[:, cols] = G[:, s:s + 1] * E
        if self.flat_ is None:
            return P
        F = self._flat_proba(X)  # (n, C)
        sure = G.max(axis=1, keepdims=True) >= self.gate_threshold  # (n, 1)
        return np.where(sure, (1.0 - self.flat_weight) * P + self.flat_weight * F, F)
