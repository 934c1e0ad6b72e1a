"""FixMatch on cached augmented views: consistency training of a light head without re-running the backbone.

Sohn et al., "FixMatch", NeurIPS 2020, moved from pixels to the store: ``python -m embed run --views K`` keeps, for
every image, the features of K augmented views, each "weak" (flip + crop) or "strong" (RandAugment). A head (linear
or a small MLP on centred, L2-normalised features) is trained with

    loss = CE(head(labeled rows: plain and weak views), y)
         + lambda_u * mean over unlabeled rows of  mask * CE(head(strong view), argmax head(weak view))

where ``mask`` keeps the weak predictions that pass the class-aware thresholds of
:class:`classify.methods.thresholds.ClassAwareThresholds` (Lucas et al. 2022; the same rule as ``selftrain``'s
``selection="classaware"``), stepped once per mini-batch as in the paper. Seconds on a CPU instead of GPU hours.

Input contract (see ``classify.pipeline.load_data``): the capability ``uses_views=True``, declared at registration,
makes the pipeline pass rows ``[features | view_0 | ... | view_{V-1}]`` (each D wide) and the store's ``view_kinds``
(V strings).
``predict`` reads the plain feature block only.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier
from classify.methods.features import checked_labeled_mask, l2_normalize
from classify.methods.registry import register_method
from classify.methods.thresholds import ClassAwareThresholds
from store.validation import BOOL, NONE, Int, Options, Real, UserError

log = logging.getLogger(__name__)

VIEW_KINDS = ("weak", "strong")


@contextmanager
def _torch_threads(n: int):
    """Run torch on ``n`` threads inside the block (restored after).

    The head's matrices are tiny (a batch of a few hundred rows × D × C); on 2 shared cores torch's default
    thread pool was measured ~10x slower on such steps than one thread (oversubscription), as for BLAS in
    ``classify.methods.features.single_threaded_blas``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@register_method("fixmatch", uses_views=True)
class FixMatchHead(FewShotClassifier):
    """A head trained FixMatch-style on cached weak/strong view features, with class-aware thresholds.

    Rows with ``y == -1`` are unlabeled. X rows are ``[features | view_0 | ... | view_{V-1}]``.

    Parameters
    ----------
    view_kinds : list of str, default=None
        Kind of each cached view, ``"weak"`` or ``"strong"`` (the pipeline passes the store's). The consistency
        term needs at least one strong view; without a weak view the plain features serve as the weak one.
        ``[]`` (no views) trains on the labeled rows only.
    center : bool, default=True
        Subtract the mean of the fitted rows' plain features from every block before L2 normalisation.
    hidden : int or None, default=None
        Width of one hidden ReLU layer; None is a linear head.
    epochs : int, default=10
        Passes over the unlabeled rows (over the labeled rows when there are none).
    batch_size : int, default=64
        Labeled rows per step.
    mu : int, default=4
        Unlabeled rows per labeled row in a step (FixMatch's mu; the paper uses 7).
    lambda_u : float, default=1.0
        Weight of the unlabeled consistency loss; 0 trains on the labeled rows (and their weak views) only.
    lr : float, default=5e-2
        Peak learning rate of the AdamW optimiser of the head, annealed to 0 by a cosine schedule over all
        training steps (the paper: SGD with Nesterov momentum for 2^20 steps; a head on fixed features converges
        in a few hundred AdamW steps).
    weight_decay : float, default=5e-4
        AdamW's decoupled weight decay on every weight and bias of the head (each step shrinks them by
        ``lr * weight_decay``); 0 disables it.
    threshold : float, default=0.95
        Initial class-aware threshold (FixMatch's fixed tau).
    ema : float in [0, 1), default=0.9
        Momentum of the :class:`~classify.methods.thresholds.ClassAwareThresholds` moving average of each class's share
        of the pseudo-labels (``share = ema * share + (1 - ema) * batch share``); higher reacts more slowly.
    eps : float, default=0.001
        How far every class threshold moves at each training step: up by ``eps`` while its class is
        over-represented among the pseudo-labels relative to ``target``, down by ``eps`` while under-represented
        (clipped to [0, 1]); 0 keeps the thresholds at ``threshold``.
    target : {"labeled", "uniform"}, default="labeled"
        Target class shares of the pseudo-labels: the labeled class prior, or uniform.
    random_state : int, default=0
        Seeds the head init and the batch order.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coefs_ : list of ndarray
        Weight matrix of each layer of the trained head, ``(in, out)`` (one layer, or two with ``hidden``), applied to
        centred, L2-normalised features. Plain arrays, so a saved model holds no torch object.
    intercepts_ : list of ndarray
        Bias of each layer, ``(out,)``.
    mean_ : ndarray of shape (D,)
        The centre (zeros without ``center``).
    thresholds_ : ndarray of shape (n_classes,) or None
        Final class-aware thresholds (None without a consistency term).
    fit_report_ : dict
        Per epoch: supervised and unsupervised loss, share of unlabeled rows passing the thresholds.
    n_features_in_ : int
        ``D * (1 + V)``.
    """

    _parameter_constraints = {"center": [BOOL], "hidden": [NONE, Int(1)], "epochs": [Int(0)], "batch_size": [Int(1)],
                              "mu": [Int(1)], "lambda_u": [Real(0)], "lr": [Real(0, low_open=True)],
                              "weight_decay": [Real(0)], "threshold": [Real(0, 1)], "ema": [Real(0, 1)],
                              "eps": [Real(0)], "target": [Options("labeled", "uniform")],
                              "random_state": [NONE, Int()]}

    def __init__(self, view_kinds=None, center=True, hidden=None, epochs=10, batch_size=64, mu=4, lambda_u=1.0, lr=5e-2,
                 weight_decay=5e-4, threshold=0.95, ema=0.9, eps=0.001, target="labeled", random_state=0):
        self.view_kinds = view_kinds
        self.center = center
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.mu = mu
        self.lambda_u = lambda_u
        self.lr = lr
        self.weight_decay = weight_decay
        self.threshold = threshold
        self.ema = ema
        self.eps = eps
        self.target = target
        self.random_state = random_state

    # ------------------------------------------------------------------ helpers
    def _kinds(self) -> list[str]:
        if self.view_kinds is None:
            raise UserError("fixmatch needs view_kinds, the kind ('weak'/'strong') of each cached view; embed with "
                             "`python -m embed run --views K` (the pipeline then passes the store's view kinds)")
        kinds = [str(k) for k in self.view_kinds]
        bad = sorted(set(kinds) - set(VIEW_KINDS))
        if bad:
            raise UserError(f"view_kinds may hold only 'weak' and 'strong', got {bad}")
        return kinds

    @staticmethod
    def _width(X: np.ndarray, n_views: int) -> int:
        if X.shape[1] % (1 + n_views):
            raise UserError(f"X has {X.shape[1]} columns, not a multiple of 1 + {n_views} views: rows must be "
                             "[features | view_0 | ... ] as the pipeline builds them for fixmatch")
        return X.shape[1] // (1 + n_views)

    def _blocks(self, X: np.ndarray, n_views: int, plain_only: bool = False) -> np.ndarray:
        """Rows (n, (1+V)*D) -> blocks (1+V, n, D) (block 0 the plain features), minus ``mean_``, L2-normalised.

        Centring removes the direction every backbone feature shares (pooled activations are mostly positive),
        which otherwise squeezes all rows into a narrow cone and keeps a head on unit-norm features unconfident.
        """
        D = self._width(X, n_views)
        blocks = X[:, :D][None] if plain_only else X.reshape(len(X), 1 + n_views, D).transpose(1, 0, 2)
        return l2_normalize(blocks - self.mean_.astype(X.dtype)).astype(np.float32)  # (1+V, n, D)

    def _make_head(self, dim: int, n_classes: int):
        import torch

        if self.hidden is None:
            return torch.nn.Linear(dim, n_classes)
        return torch.nn.Sequential(torch.nn.Linear(dim, int(self.hidden)), torch.nn.ReLU(),
                                   torch.nn.Linear(int(self.hidden), n_classes))

    # ------------------------------------------------------------------ fit
    def fit(self, X, y):
        """Train the head on labeled rows (plain + weak views) and, on unlabeled rows, weak→strong consistency.

        Parameters
        ----------
        X : array-like of shape (n_rows, D * (1 + V))
        y : array-like of shape (n_rows,)
            Class labels; -1 marks an unlabeled row.

        Returns
        -------
        self
        """
        import torch

        self._validate_params()
        kinds = self._kinds()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        labeled = checked_labeled_mask(y)
        classes = np.unique(y[labeled])
        if classes.size < 2:
            raise UserError(f"fixmatch needs labeled rows of at least 2 classes, got {classes.size} class"
                             f"{'' if classes.size == 1 else 'es'}; label more rows (y = -1 marks unlabeled)")
        self.classes_ = classes
        n_classes = len(classes)
        D = self._width(X, len(kinds))
        self.mean_ = X[:, :D].mean(axis=0) if self.center else np.zeros(D, dtype=X.dtype)  # (D,)
        blocks = self._blocks(X, len(kinds))  # (1+V, n, D)
        weak = [1 + i for i, k in enumerate(kinds) if k == "weak"] or [0]  # plain features are the weakest view
        strong = [1 + i for i, k in enumerate(kinds) if k == "strong"]
        sup_blocks = [0] + [b for b in weak if b != 0]
        y_idx = np.searchsorted(classes, y[labeled])
        # supervised pool: every labeled row's plain features and its weak views
        Xs = torch.from_numpy(np.concatenate([blocks[b][labeled] for b in sup_blocks]))  # (n_l*(1+W), D)
        ys = torch.from_numpy(np.tile(y_idx, len(sup_blocks)).astype(np.int64))
        Xu = torch.from_numpy(np.ascontiguousarray(blocks[:, ~labeled].transpose(1, 0, 2)))  # (n_u, 1+V, D)
        # the schedule (steps per epoch) depends only on the data, so lambda_u=0 is the same training minus the
        # unlabeled term: the labels-only baseline
        use_unlabeled = bool(strong) and len(Xu) > 0
        consistency = use_unlabeled and self.lambda_u > 0
        if not strong and kinds:
            log.warning("fixmatch: no strong view among %s; training on the labeled rows only", kinds)

        thresholds = None
        if consistency:
            counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
            thresholds = ClassAwareThresholds(n_classes, tau0=self.threshold, ema=self.ema, eps=self.eps,
                                              target=counts if self.target == "labeled" else None)
        seed = int(self.random_state or 0)
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]), _torch_threads(1):
            torch.manual_seed(seed)
            head = self._make_head(blocks.shape[2], n_classes)
            report = self._train(head, Xs, ys, Xu, weak, strong, thresholds, use_unlabeled, consistency, gen)
        layers = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        self.coefs_ = [m.weight.detach().numpy().T.copy() for m in layers]  # (in, out) each
        self.intercepts_ = [m.bias.detach().numpy().copy() for m in layers]  # (out,) each
        self.thresholds_ = None if thresholds is None else thresholds.thresholds.copy()
        self.fit_report_ = {"method": "fixmatch", "view_kinds": kinds, "n_labeled": int(labeled.sum()),
                            "n_unlabeled": int(len(Xu)), "consistency": consistency, "per_epoch": report,
                            "thresholds": None if thresholds is None else np.round(thresholds.thresholds, 6).tolist()}
        return self

    def _train(self, head, Xs, ys, Xu, weak, strong, thresholds, use_unlabeled, consistency, gen) -> list[dict]:
        import torch
        import torch.nn.functional as F

        n_s, n_u = len(Xs), len(Xu)
        batch = min(int(self.batch_size), n_s)
        batch_u = int(self.mu) * int(self.batch_size)
        steps_per_epoch = max(1, -(-n_u // batch_u)) if use_unlabeled else max(1, -(-n_s // batch))
        total = steps_per_epoch * int(self.epochs)
        opt = torch.optim.AdamW(head.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total))
        weak_t, strong_t = torch.tensor(weak), torch.tensor(strong)
        report = []
        for epoch in range(int(self.epochs)):
            sup_order = torch.randperm(n_s, generator=gen)
            u_order = torch.randperm(n_u, generator=gen) if consistency else None
            sums = {"loss_x": 0.0, "loss_u": 0.0, "mask_rate": 0.0}
            for step in range(steps_per_epoch):
                rows = sup_order[(step * batch + torch.arange(batch)) % n_s]  # cycle the small labeled pool
                loss_x = F.cross_entropy(head(Xs[rows]), ys[rows])
                loss_u = torch.zeros(())
                if consistency:
                    u = u_order[step * batch_u:(step + 1) * batch_u]  # (b_u,)
                    pick_w = weak_t[torch.randint(len(weak), (len(u),), generator=gen)]  # one weak view per row
                    pick_s = strong_t[torch.randint(len(strong), (len(u),), generator=gen)]
                    with torch.no_grad():
                        p_weak = head(Xu[u, pick_w]).softmax(dim=1)  # (b_u, C)
                    mask = thresholds.step(p_weak)  # (b_u,) bool, the shared class-aware rule
                    pseudo = p_weak.argmax(dim=1)
                    per_row = F.cross_entropy(head(Xu[u, pick_s]), pseudo, reduction="none")  # (b_u,)
                    loss_u = (per_row * mask.float()).mean()  # FixMatch averages over the whole unlabeled batch
                    sums["mask_rate"] += float(mask.float().mean()) / steps_per_epoch
                loss = loss_x + float(self.lambda_u) * loss_u
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                sums["loss_x"] += float(loss_x.detach()) / steps_per_epoch
                sums["loss_u"] += float(loss_u.detach()) / steps_per_epoch
            report.append({"epoch": epoch + 1, **{k: round(v, 5) for k, v in sums.items()}})
            log.debug("fixmatch epoch %d: %s", epoch + 1, report[-1])
        return report

    # ------------------------------------------------------------------ predict
    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        h = self._blocks(X, len(self._kinds()), plain_only=True)[0]  # (n, D): only the plain features
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):  # the head's forward pass, in numpy
            h = h @ W + b  # (n, out)
            if i < len(self.coefs_) - 1:
                h = np.maximum(h, 0)  # ReLU between the layers of the hidden-layer head
        return h.astype(np.float64)  # (n, C)
