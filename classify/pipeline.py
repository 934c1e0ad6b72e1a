"""From a store to fitted estimators: read features, build methods with their store context, fit, save, load.

Everything the CLI, the benchmarks and user scripts share lives here; ``classify.cli`` only parses and prints.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sklearn

from classify import persist
from classify.methods.base import NotApplicable
from classify.methods.features import UNLABELED
from classify.methods.registry import create, get
from store import ERROR, FeatureStore
from store.clitools import as_list
from store.validation import UserError

log = logging.getLogger(__name__)

# Parameters whose string (or {"method": name, ...} dict) values name another registered method.
NESTED_PARAMS = ("teacher", "head", "base", "gate", "expert", "methods")
MODEL_FORMAT = "fewshot-classifier/2"  # 2: skops files (1 was joblib, refused)
#: ``fit`` streams a store's features (methods with ``fit_chunks``) when they would take more memory than this.
STREAM_BYTES = 4 * 2**30


def jsonable(value):
    """``json.dumps(default=...)`` for numpy values (fit reports, results)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def parse_method(text: str) -> tuple[str, dict]:
    """``"selftrain(teacher=conse, rounds=2)"`` → ``("selftrain", {"teacher": "conse", "rounds": 2})``.

    Values are Python literals when they parse as one, else strings.
    """
    import ast

    name, _, rest = text.strip().partition("(")
    params = {}
    if rest:
        if not rest.endswith(")"):
            raise UserError(f"method {text!r}: expected name(key=value, ...)")
        for item in as_list(rest[:-1]):
            key, sep, value = item.partition("=")
            if not sep:
                raise UserError(f"method {text!r}: {item!r} is not key=value")
            try:
                params[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                params[key.strip()] = value.strip()
    return name.strip(), params


@dataclass
class Data:
    """Features of several backbones side by side, aligned by store row."""

    X: np.ndarray  # (n, sum D) float32
    y: np.ndarray  # (n,) int, -1 unknown
    ids: np.ndarray  # (n,) str
    index: np.ndarray  # (n,) store row indices
    splits: np.ndarray  # (n,) split names
    slices: list[tuple[int, int]] = field(default_factory=list)  # column range of each backbone in X

    def subset(self, mask: np.ndarray) -> "Data":
        return Data(self.X[mask], self.y[mask], self.ids[mask], self.index[mask], self.splits[mask], self.slices)


def load_data(store: FeatureStore, backbones: Sequence[str], split=None, views: bool = False) -> Data:
    """Decoded rows of ``split`` (None: all), features of every backbone concatenated in the given order.

    With ``views``, each backbone's block is ``[features | view_0 | … | view_{V-1}]`` (each D wide): the input of
    methods that declare ``uses_views = True`` (consistency training on cached augmented views).
    """
    parts = [store.load(spec, split) for spec in backbones]
    index = parts[0].index
    for spec, part in zip(backbones[1:], parts[1:]):
        if not np.array_equal(part.index, index):  # cannot happen for complete groups of one store
            raise UserError(f"backbone {spec!r} covers other rows than {backbones[0]!r}; re-run embed for both")
    blocks = [p.X for p in parts]
    if views:
        blocks = [np.hstack([x, store.views(spec, index).reshape(len(index), -1)])
                  for spec, x in zip(backbones, blocks)]
    widths = np.cumsum([0] + [b.shape[1] for b in blocks])
    return Data(X=blocks[0] if len(blocks) == 1 else np.hstack(blocks), y=parts[0].y, ids=parts[0].ids, index=index,
                splits=store.splits[index], slices=[(int(a), int(b)) for a, b in zip(widths[:-1], widths[1:])])


def uses_views(method) -> bool:
    """Whether a method (name or estimator) takes ``[features | views…]`` rows (its ``uses_views`` capability)."""
    cls = get(method) if isinstance(method, str) else type(method)
    return bool(getattr(cls, "uses_views", False))


def store_context(store: FeatureStore, spec: str) -> dict[str, Any]:
    """What a method may take from the store for one backbone, by parameter name.

    ``class_names`` (the display names: words for prompts and sentence encoders), ``backbone_spec`` and
    ``backbone_weights_sha256`` (the hash of the weights the features come from, for methods that load the backbone
    again: coop's text tower) always; ``view_kinds`` when the store has augmented views; ``text_embeddings``,
    ``templates``, ``logit_scale`` for CLIP backbones; ``head_weight``, ``head_bias``, ``head_classes`` for backbones
    that are classifiers themselves (e.g. ImageNet timm models).
    """
    origin = store.provenance(spec)
    context: dict[str, Any] = {"class_names": store.display_names, "backbone_spec": spec,
                               "backbone_weights_sha256": origin["weights_sha256"]}
    if store.has_text(spec):
        text, templates, scale = store.text(spec)
        context.update(text_embeddings=text, templates=templates)
        if scale is not None:
            context["logit_scale"] = scale
    head = store.head(spec)
    if head is not None:
        context.update(head_weight=head[0], head_bias=head[1], head_classes=head[2])
    view_kinds = origin.get("view_kinds") or []
    if view_kinds:
        context["view_kinds"] = view_kinds
    return context


def build(method, params: dict | None = None, context: dict | None = None):
    """An estimator for ``method`` with ``params``; store context fills the parameters the user left unset.

    Parameters named in :data:`NESTED_PARAMS` may themselves name methods (``"labelprop"``, or
    ``{"method": "labelprop", "k": 20}``); they are built recursively with the same context, also when such a name
    is the parameter's default (``auto``'s candidates).
    """
    if not isinstance(method, str):  # already an estimator
        return method
    params, context = dict(params or {}), context or {}
    accepted = inspect.signature(get(method).__init__).parameters
    for name in NESTED_PARAMS:
        default = accepted[name].default if name in accepted else None
        if name in params or isinstance(default, (str, dict, list, tuple)):  # a default naming methods (auto's) too
            value = params.get(name, default)
            params[name] = [_build_nested(v, context) for v in value] if isinstance(value, (list, tuple)) \
                else _build_nested(value, context)
    for key, value in context.items():
        if key in accepted and params.get(key) is None:
            params[key] = value
    cls = get(method)
    if cls.needs_text and params.get("text_embeddings") is None and context.get("text_embeddings") is None:
        raise NotApplicable(f"{method} needs CLIP text embeddings, and this backbone has none in the store; embed with "
                            "a CLIP backbone (clip:<arch>/<tag>) or choose another method")
    if cls.uses_views and context and not (params.get("view_kinds") or context.get("view_kinds")):
        raise NotApplicable(f"{method} trains on cached augmented views and the store has none; embed with "
                            "`python -m embed run ... --views 2`")
    return create(method, **params)


def _build_nested(value, context):
    if isinstance(value, str):
        return build(value, {}, context)
    if isinstance(value, dict) and "method" in value:
        value = dict(value)
        return build(value.pop("method"), value, context)
    return value


def concat_context(store: FeatureStore, backbones: Sequence[str]) -> dict[str, Any]:
    """The store context of one model on the features of ``backbones`` concatenated: the backbone's own
    (:func:`store_context`) for one backbone; none for several (text embeddings, an ImageNet head and views belong to
    one backbone's columns). ``classify fit|evaluate`` and ``python -m benchmarks run`` build with this one rule."""
    return store_context(store, backbones[0]) if len(backbones) == 1 else {}


def build_for_store(store: FeatureStore, backbones: Sequence[str], method: str, params: dict | None = None,
                    combine: str = "concat", slices: Sequence[tuple[int, int]] | None = None):
    """The estimator for ``backbones`` of a store: one model on concatenated features (context from
    :func:`concat_context`), or an ensemble of one model per backbone (``combine="ensemble"``, members reading the
    column ``slices`` of their backbone), each built with its own backbone's context."""
    if combine not in ("concat", "ensemble"):
        raise UserError(f"--combine must be concat or ensemble, not {combine!r}")
    if len(backbones) == 1 or combine == "concat":
        return build(method, params, concat_context(store, backbones))
    members = [build(method, params, store_context(store, spec)) for spec in backbones]
    return create("ensemble", methods=members, feature_slices=[tuple(s) for s in slices])


def fit_rows(data: Data, transductive: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rows a fit sees: labeled train rows, the unlabeled pool, and (transductive) the test rows without labels."""
    use = data.splits != "test" if not transductive else np.ones(len(data.y), dtype=bool)
    y = np.where(data.splits == "train", data.y, UNLABELED)  # test labels never reach a fit
    return data.X[use], y[use]


@dataclass
class FittedModel:
    """A fitted estimator and what it was fitted on; saved with :meth:`save`, checked on :func:`load_model`."""

    estimator: Any
    method: str
    params: dict
    backbones: list[str]
    combine: str
    store_fingerprint: str
    classes: list[str]
    fit_seconds: float
    views: bool = False  # rows are [features | views…] (see load_data)
    backbone_weights: dict = field(default_factory=dict)  # spec -> weights sha256 of the features it saw
    versions: dict = field(default_factory=lambda: {"sklearn": sklearn.__version__, "numpy": np.__version__,
                                                    "skops": importlib.metadata.version("skops")})

    def save(self, path: str | Path) -> Path:
        """Write the model as a skops file (see :mod:`classify.persist`: loading it can run no code)."""
        return persist.save({"format": MODEL_FORMAT, **self.__dict__}, path)

    def check_store(self, store: FeatureStore) -> None:
        """Refuse a store of other images, or whose features of these backbones come from other weights (labels are
        metadata: a store relabeled since the fit still matches)."""
        if not store.matches_rows(self.store_fingerprint):
            raise UserError(f"the model was fitted on another store (image list {self.store_fingerprint[:12]}, "
                             f"{store.path} has {store.fingerprint[:12]}); use the store it was fitted on or refit")
        for spec, sha in self.backbone_weights.items():
            if store.provenance(spec)["weights_sha256"] != sha:
                raise UserError(f"the features of {spec} in {store.path} come from other weights than the model was "
                                 "fitted on; refit the model on this store")


def load_model(path: str | Path) -> FittedModel:
    """A model written by :meth:`FittedModel.save`; files that could run code, or name foreign types, are refused."""
    payload = persist.load(path, "model", f"create one with `python -m classify fit ... --out {Path(path).name}`")
    if not isinstance(payload, dict) or payload.pop("format", None) != MODEL_FORMAT:
        raise UserError(f"{path} is not a model saved by `python -m classify fit`")
    fields = {f.name for f in dataclasses.fields(FittedModel)}
    if not fields >= set(payload) >= {"estimator", "method", "backbones", "store_fingerprint", "classes"}:
        raise UserError(f"{path} is not a model saved by `python -m classify fit` (unexpected fields); refit it")
    return FittedModel(**payload)


def fit(store: FeatureStore, backbones: Sequence[str], method: str, params: dict | None = None,
        combine: str = "concat", transductive: bool = True, stream: bool | None = None) -> FittedModel:
    """Fit ``method`` on a store: labeled train rows, the unlabeled pool, and (transductive) unlabeled test rows.

    ``stream`` reads the features chunk by chunk into the method's ``fit_chunks`` (labelprop) instead of loading
    them; None streams when the features would exceed :data:`STREAM_BYTES`.
    """
    can_stream = hasattr(get(method), "fit_chunks") and len(backbones) == 1 and not uses_views(method)
    if stream is None:
        stream = can_stream and len(store) * store.provenance(backbones[0])["dim"] * 4 > STREAM_BYTES
    if stream and not can_stream:
        raise UserError(f"--stream needs one backbone and a method that reads chunks (labelprop), not {method!r}")
    if stream:
        index = store.row_index(backbones[0])
        use = np.ones(index.size, dtype=bool) if transductive else store.splits[index] != "test"
        y = np.where(store.splits[index] == "train", store.labels[index], UNLABELED)[use]
        rows = store.row_chunks(backbones[0], index[use])
        estimator = build_for_store(store, backbones, method, params, combine)
    else:
        data = load_data(store, backbones, views=uses_views(method))
        estimator = build_for_store(store, backbones, method, params, combine, data.slices)
        X, y = fit_rows(data, transductive)
    if not (y != UNLABELED).any() and not _needs_no_labels(estimator):
        raise UserError(f"store {store.path} has no labeled training rows; put images in train/<class>/ or use "
                         "a method that needs no labels (zeroshot, conse)")
    start = time.perf_counter()
    estimator.fit_chunks(rows, y) if stream else estimator.fit(X, y)
    seconds = time.perf_counter() - start
    log.info("fitted %s on %d rows (%d labeled) in %.2f s", method, len(y), int((y != UNLABELED).sum()), seconds)
    return FittedModel(estimator=estimator, method=method, params=dict(params or {}), backbones=list(backbones),
                       combine=combine, store_fingerprint=store.fingerprint, classes=store.classes,
                       fit_seconds=seconds, views=uses_views(method),
                       backbone_weights={spec: store.provenance(spec)["weights_sha256"] for spec in backbones})


def unpredictable_classes(store: FeatureStore, known=None) -> list[str]:
    """The store's classes a model fitted on it cannot predict, each with a warning line saying why.

    Parameters
    ----------
    store : FeatureStore
        The store the model is (or was) fitted on.
    known : array-like of int, optional
        The class indices the model predicts (a fitted estimator's ``classes_``); default: the classes that have a
        decoded labeled train image (what a fit on every train label learns).

    Returns
    -------
    list of str
        Their names, in class order (empty when the model predicts every class).
    """
    names = store.classes
    train = (store.splits == "train") & (store.labels >= 0)
    labels, failed = store.labels, store.status == ERROR
    if known is None:
        known = np.unique(labels[train & ~failed])
    have = {int(c) for c in np.asarray(known).ravel()}
    missing = [c for c in range(len(names)) if c not in have]
    for c in missing:
        n = int((train & (labels == c)).sum())
        bad = int((train & (labels == c) & failed).sum())
        why = (f"none of its {n} train image{'s' * (n != 1)} decoded (`python -m store info {store.path}` lists the "
               "errors)" if n and bad == n else "it has no labeled train image" if not n else
               "the model was fitted without its labels")
        log.warning("class %r cannot be predicted: %s; add train images of it that decode and refit", names[c], why)
    return [names[c] for c in missing]


def _needs_no_labels(estimator) -> bool:
    """Methods that fit without any label (zeroshot, conse, self-training from them) say ``needs_labels = False``."""
    return getattr(estimator, "needs_labels", True) is False

