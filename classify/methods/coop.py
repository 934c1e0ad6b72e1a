"""CoOp prompt learning on cached image features: learned context vectors through the CLIP text tower.

Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022. The prompt of class c is

    [SOS] [V]_1 ... [V]_M [CLASS c] . [EOS]

where the M context vectors [V] (shared by all classes, of the token-embedding width) are the only trainable
parameters. They pass through the frozen text tower (open_clip's token_embedding / transformer / ln_final /
text_projection, as in ``CLIP.encode_text``) to class embeddings, trained with cross-entropy of
``logit_scale * cos(image feature, class embedding)`` on the labeled rows. The image features come from the store,
so the image tower never runs. After ``fit`` only the learned class embeddings (C, D) are kept: ``predict`` is a
matrix product and a pickled model holds no CLIP weights.

Speed on CPU: the text tower is causal, so the output at the end-of-text token depends only on the tokens before
it; prompts are cut after the longest one's end-of-text token (~10 instead of 77 positions), exactly.
"""
from __future__ import annotations

import logging
import numbers
import threading
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from classify.methods.base import FewShotClassifier, check_class_indices
from classify.methods.features import checked_labeled_mask, l2_normalize
from classify.methods.registry import register_method
from store.validation import NONE, Int, Is, Options, Real, UserError

log = logging.getLogger(__name__)

_PLACEHOLDER = "X"  # one BPE token in CLIP's vocabulary; its positions are overwritten by the context vectors


def _text_tower(model) -> SimpleNamespace:
    """The parts of an open_clip text tower that ``encode_text`` uses, for CLIP and CustomTextCLIP towers."""
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):  # open_clip.CLIP
        return SimpleNamespace(token_embedding=model.token_embedding, positional_embedding=model.positional_embedding,
                               transformer=model.transformer, ln_final=model.ln_final,
                               text_projection=model.text_projection, attn_mask=model.attn_mask,
                               pool_type=model.text_pool_type, eos_id=getattr(model, "text_eos_id", None))
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "token_embedding") and getattr(text, "cls_emb", None) is None \
            and not getattr(text, "use_pad_mask", False):  # open_clip.CustomTextCLIP with a TextTransformer
        return SimpleNamespace(token_embedding=text.token_embedding, positional_embedding=text.positional_embedding,
                               transformer=text.transformer, ln_final=text.ln_final,
                               text_projection=text.text_projection, attn_mask=text.attn_mask,
                               pool_type=text.pool_type, eos_id=getattr(text, "eos_id", None))
    raise UserError(f"coop supports open_clip models with their own causal text transformer (CLIP-style); "
                     f"{type(model).__name__} has another text tower (e.g. a Hugging Face one or CoCa)")


def _import_torch():
    import torch  # imported where needed: predict and pickles never need torch

    return torch


def build_prompt_learner(model, tokenizer, class_names, n_ctx: int = 4, ctx_init: str | None = "a photo of a",
                         generator=None):
    """The torch module holding CoOp's context vectors over the frozen text tower of an open_clip ``model``.

    Every parameter of ``model`` gets ``requires_grad=False``; the module's only parameter is ``ctx`` (M, width),
    and ``forward()`` returns the class text features (C, D), un-normalised like ``encode_text``.

    Parameters
    ----------
    model : open_clip.CLIP
    tokenizer : callable
        open_clip's tokenizer of ``model`` (list of str -> LongTensor (n, context_length)).
    class_names : list of str
    n_ctx : int
        Context vectors M when ``ctx_init`` is None.
    ctx_init : str or None
        Words whose token embeddings initialise the context (M = their token count).
    generator : torch.Generator, optional
        For the random init.
    """
    torch = _import_torch()
    nn = torch.nn
    from open_clip.transformer import text_global_pool

    tower = _text_tower(model)
    for p in model.parameters():
        p.requires_grad_(False)
    width = tower.token_embedding.weight.shape[1]
    if ctx_init:
        init_tokens = tokenizer([ctx_init])[0]  # (L,) [SOT] words [EOT] padding
        n_words = int(init_tokens.argmax()) - 1  # the EOT id is the largest in CLIP's vocabulary
        if n_words < 1:
            raise UserError(f"ctx_init {ctx_init!r} has no tokens; give words or ctx_init=None")
        with torch.no_grad():
            ctx = tower.token_embedding(init_tokens[1:1 + n_words].to(tower.token_embedding.weight.device))
    else:
        if not (isinstance(n_ctx, numbers.Integral) and n_ctx >= 1):
            raise UserError(f"n_ctx must be an int >= 1 (context vectors), got {n_ctx!r}")
        ctx = torch.randn(int(n_ctx), width, generator=generator) * 0.02  # CoOp's N(0, 0.02^2) init
        n_words = int(n_ctx)
    prefix = " ".join([_PLACEHOLDER] * n_words)
    tokens = tokenizer([f"{prefix} {name}." for name in class_names])  # (C, L)
    eot = tokens.argmax(dim=-1)  # (C,)
    if int(eot.min()) < n_words + 2 or bool((tokens[:, -1] != 0).any()):
        raise UserError(f"a prompt of {n_words} context tokens plus a class name does not fit the text tower's "
                         f"{tokens.shape[1]} tokens; use shorter class names or fewer context tokens")
    length = int(eot.max()) + 1  # causal tower: nothing after the last EOT changes the pooled output
    tokens = tokens[:, :length]

    class _Learner(nn.Module):
        def __init__(self):
            super().__init__()
            device = tower.token_embedding.weight.device
            self.ctx = nn.Parameter(ctx.detach().clone().float().to(device))  # (M, width)
            self.tower = tower
            self.register_buffer("tokens", tokens.to(device), persistent=False)  # (C, L')
            with torch.no_grad():
                self.register_buffer("embedded", tower.token_embedding(self.tokens), persistent=False)

        def forward(self):
            t = self.tower
            cast = t.transformer.get_cast_dtype()
            C = self.tokens.shape[0]
            x = torch.cat([self.embedded[:, :1], self.ctx.to(cast).expand(C, -1, -1),
                           self.embedded[:, 1 + self.ctx.shape[0]:]], dim=1)  # (C, L', width)
            x = x + t.positional_embedding[:length].to(cast)
            mask = None if t.attn_mask is None else t.attn_mask[:length, :length]
            x = t.transformer(x, attn_mask=mask)  # (C, L', width)
            x = t.ln_final(x)
            x = text_global_pool(x, self.tokens, t.pool_type, eos_token_id=t.eos_id)  # (C, width)
            if t.text_projection is not None:
                x = t.text_projection(x) if isinstance(t.text_projection, nn.Linear) else x @ t.text_projection
            return x  # (C, D)

    return _Learner()


def _device(name: str):
    torch = _import_torch()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


#: Loaded CLIP backbones by (spec, weights sha256, device), most recent last: the folds of a cross-validation and
#: repeated fits share one tower. Only towers checked against an expected hash are kept; a few, as each is a whole
#: CLIP model.
_TOWERS: OrderedDict[tuple[str, str, str], object] = OrderedDict()
_TOWERS_KEPT = 2
_TOWERS_LOCK = threading.Lock()


def clear_tower_cache() -> None:
    """Forget the CLIP backbones kept for repeated fits (frees their memory)."""
    with _TOWERS_LOCK:
        _TOWERS.clear()


def load_text_tower(spec: str, weights_sha256: str | None, device):
    """The CLIP backbone of ``spec`` on ``device``, refused when its weights are not ``weights_sha256``.

    With an expected hash the backbone is kept for the process (per spec, hash and device) and reused; without one it
    is loaded on every call, as nothing says which weights it must have.

    Raises
    ------
    ValueError
        The weights ``spec`` loads now differ from ``weights_sha256`` (the checkpoint changed or was downloaded again
        since the features were computed), in one line saying how to fix it.
    """
    from embed.backbones import load_backbone  # text towers are the one reason classify imports embed

    key = (str(spec), weights_sha256, str(device))
    if weights_sha256 is not None:
        with _TOWERS_LOCK:
            if key in _TOWERS:
                _TOWERS.move_to_end(key)
                return _TOWERS[key]
    backbone = load_backbone(spec, device=device)
    if weights_sha256 is None:
        return backbone
    if backbone.weights_sha256 != weights_sha256:
        raise UserError(
            f"coop: {spec} now loads other weights (sha256 {backbone.weights_sha256[:12]}, from "
            f"{backbone.weights_source}) than the store's features of it were computed with ({weights_sha256[:12]}), "
            "so the text tower would not match the image features; restore those weights, or embed the images "
            f"again with the current ones (`python -m embed run --backbone {spec} --store NEW.h5 ...`) and fit on "
            "that store")
    with _TOWERS_LOCK:
        _TOWERS[key] = backbone
        while len(_TOWERS) > _TOWERS_KEPT:
            _TOWERS.popitem(last=False)
    return backbone


@register_method("coop", needs_text=True)
class CoOp(FewShotClassifier):
    """CoOp: context vectors learned through the CLIP text tower against the store's image features.

    Rows labeled ``-1`` are unlabeled and ignored. Labels are indices into ``class_names`` and ``classes_`` is
    ``arange(C)``; classes without labeled rows still get a (learned-context) class embedding.

    Parameters
    ----------
    class_names : list of str, default=None
        The C class names (the pipeline takes them from the store).
    backbone_spec : str, default=None
        The CLIP backbone the features come from (``clip:<arch>/<tag>`` or ``clip:<arch>@<checkpoint>``; the
        pipeline takes it from the store). Loaded lazily in ``fit`` with ``embed.backbones.load_backbone``.
    backbone_weights_sha256 : str, default=None
        The weights hash of the features (the pipeline passes the store's ``weights_sha256``): ``fit`` refuses a
        ``backbone_spec`` that loads other weights, and keeps the checked tower for later fits in the process (see
        :func:`load_text_tower`). None loads the spec's weights on every fit, unchecked.
    n_ctx : int, default=4
        Context vectors M when ``ctx_init`` is None.
    ctx_init : str or None, default="a photo of a"
        Initialise the context from these words' token embeddings (M = their token count), which starts training
        at that prompt's zero-shot classifier; None draws M = ``n_ctx`` vectors from N(0, 0.02^2) (the paper's
        generic init).
    logit_scale : float or None, default=None
        Temperature of the cosine logits; None uses the CLIP model's learned scale (the pipeline passes the
        store's, which is the same).
    epochs : int, default=50
        Passes over the labeled rows.
    batch_size : int or None, default=None
        Labeled rows per step; None uses all of them (one text-tower pass serves the whole batch, so full-batch
        steps are the cheap ones on a CPU).
    lr : float, default=2e-3
        Learning rate of Adam with a cosine schedule (the paper: SGD at 0.002 for 50-200 epochs of batches of 32;
        Adam converges in far fewer full-batch steps).
    weight_decay : float, default=0.0
        Adam's L2 penalty on the context vectors (coupled: ``weight_decay * ctx`` is added to their gradient, not
        AdamW's decoupled decay); 0 leaves them unregularised.
    device : str, default="auto"
        torch device for the text tower ("auto": CUDA when available).
    random_state : int, default=0
        Seeds the random context init and the batch order.

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    class_embeddings_ : ndarray of shape (C, D), float32
        Unit-norm text features of the learned prompts.
    ctx_ : ndarray of shape (M, width), float32
        Learned context vectors.
    logit_scale_ : float
    loss_curve_ : list of float
        Mean training loss of each epoch.
    n_features_in_ : int
    """

    _parameter_constraints = {"n_ctx": [Int(1)], "logit_scale": [NONE, Real(0, low_open=True)], "epochs": [Int(0)],
                              "batch_size": [NONE, Int(1)], "lr": [Real(0, low_open=True)], "weight_decay": [Real(0)],
                              "device": [Options("auto", "cpu", "cuda")], "random_state": [NONE, Int()],
                              "backbone_weights_sha256": [NONE, Is(lambda v: isinstance(v, str) and bool(v),
                                                                   "a weights hash (str)")]}

    def __init__(self, class_names=None, backbone_spec=None, n_ctx=4, ctx_init="a photo of a", logit_scale=None,
                 epochs=50, batch_size=None, lr=2e-3, weight_decay=0.0, device="auto", random_state=0,
                 backbone_weights_sha256=None):
        self.class_names = class_names
        self.backbone_spec = backbone_spec
        self.backbone_weights_sha256 = backbone_weights_sha256
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.logit_scale = logit_scale
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.device = device
        self.random_state = random_state

    def _load_clip(self):
        """The CLIP backbone of ``backbone_spec`` with the features' weights (only its text tower is used)."""
        if not self.backbone_spec or not str(self.backbone_spec).startswith("clip:"):
            raise UserError(f"coop needs the CLIP backbone the features come from, as backbone_spec "
                             f"'clip:<arch>/<tag>' or 'clip:<arch>@<checkpoint>' (the pipeline passes the store's), "
                             f"got {self.backbone_spec!r}")
        return load_text_tower(self.backbone_spec, self.backbone_weights_sha256, _device(self.device))

    def fit(self, X, y):
        """Learn the context vectors on the labeled rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_rows, D)
            CLIP image features of ``backbone_spec``.
        y : array-like of shape (n_rows,)
            Class indices into ``class_names``; -1 marks an unlabeled row (ignored).

        Returns
        -------
        self
        """
        torch = _import_torch()
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        labeled = checked_labeled_mask(y)
        if not self.class_names or len(self.class_names) < 2:
            raise UserError("coop needs class_names, at least 2 (the pipeline takes them from the store)")
        n_classes = len(self.class_names)
        yl = y[labeled]
        if not yl.size:
            raise UserError("coop needs labeled rows (y = -1 marks unlabeled); with no labels use zeroshot")
        check_class_indices(y, n_classes, "class_names")
        backbone = self._load_clip()
        if backbone.dim != X.shape[1]:
            raise UserError(f"{self.backbone_spec} gives {backbone.dim}-dim features but X has {X.shape[1]} columns; "
                             "pass the features of that CLIP backbone")
        device = backbone.device
        gen = torch.Generator().manual_seed(int(self.random_state or 0))
        learner = build_prompt_learner(backbone.model, backbone.tokenizer, list(self.class_names), self.n_ctx,
                                       self.ctx_init, generator=gen)
        scale = float(backbone.logit_scale if self.logit_scale is None else self.logit_scale)
        images = torch.as_tensor(l2_normalize(X[labeled]), dtype=torch.float32, device=device)  # (n_l, D)
        target = torch.as_tensor(yl.astype(np.int64), device=device)  # (n_l,)
        n = len(target)
        batch = n if self.batch_size is None else max(1, min(int(self.batch_size), n))
        steps = int(self.epochs) * -(-n // batch)
        opt = torch.optim.Adam([learner.ctx], lr=float(self.lr), weight_decay=float(self.weight_decay))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        self.loss_curve_ = []
        for epoch in range(int(self.epochs)):
            total = 0.0
            for rows in torch.randperm(n, generator=gen).split(batch):
                text = torch.nn.functional.normalize(learner().float(), dim=-1)  # (C, D)
                logits = scale * images[rows.to(device)] @ text.T  # (b, C)
                loss = torch.nn.functional.cross_entropy(logits, target[rows.to(device)])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(rows)
            self.loss_curve_.append(total / n)
            log.debug("coop epoch %d: loss %.4f", epoch + 1, self.loss_curve_[-1])
        with torch.no_grad():
            text = torch.nn.functional.normalize(learner().float(), dim=-1)  # (C, D)
        self.class_embeddings_ = text.cpu().numpy().astype(np.float32)
        self.ctx_ = learner.ctx.detach().float().cpu().numpy()
        self.logit_scale_ = scale
        self.classes_ = np.arange(n_classes)
        if self.loss_curve_:
            log.info("coop: %d context vectors, loss %.4f -> %.4f over %d epochs", self.ctx_.shape[0],
                     self.loss_curve_[0], self.loss_curve_[-1], self.epochs)
        return self

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        Xn = l2_normalize(validate_data(self, X, dtype=[np.float32, np.float64], reset=False))  # (n, D)
        return self.logit_scale_ * (Xn @ self.class_embeddings_.T.astype(Xn.dtype)).astype(np.float64)  # (n, C)
