"""End-to-end fine-tuning (``python -m classify finetune``): the path back when cached features are not enough.

What one run does
-----------------
1. Reads the labeled images of a challenge-layout folder (``train/<class>/*``) and holds out a stratified
   validation split (``val_fraction``). With ``pseudo=`` it adds the confident predictions of a fitted classify model
   (``selftrain``, ``labelprop``, ...) on the store's unlabeled rows, selected by
   :class:`classify.thresholds.ClassAwareThresholds` exactly as ``selftrain``'s "classaware" selection does.
2. Builds ``backbone → L2-normalise → linear``. The linear head comes from a fitted feature-level model (``init=``:
   a saved ``linear`` probe, its WiSE blend with zero-shot included, or ``zeroshot``); without ``init`` a linear probe
   is fitted here on the frozen features of the training split (LP-FT: Kumar et al., ICLR 2022). Before the first
   step the network predicts exactly what that model predicts.
3. Trains with AdamW, layer-wise learning-rate decay (timm's param groups) and a cosine schedule with warm-up, on
   weakly augmented labeled images (flip, random-resized crop, mild colour jitter) plus FixMatch consistency on the
   unlabeled pool (Sohn et al., 2020): the weak view's arg-max becomes the target of the strong (RandAugment) view
   where its confidence reaches that class's threshold. The thresholds are the shared ``ClassAwareThresholds``,
   stepped once per unlabeled batch as in Lucas et al. (AAAI 2022). ``unfreeze`` picks the trainable layers;
   BatchNorm running statistics stay as loaded unless ``bn_train`` (see :class:`FineTuneNet`).
4. Keeps the epoch with the best validation accuracy (ties: lower validation loss; the initial network counts as
   epoch 0) and stops after ``patience`` epochs without improvement. WiSE-FT (Wortsman et al., CVPR 2022): the
   exported weights are ``(1 - alpha) * initial + alpha * best``, alpha chosen on the validation split. A ``linear``
   init model was fitted on the validation rows too, so there the initial network is no candidate and alpha is 0.5
   (WiSE-FT's default without clean held-out data): chosen by validation, alpha would be 0 every time.
5. Writes ``out``: the backbone's state_dict, which ``timm:<name>@out`` / ``clip:<arch>@out`` load in
   ``python -m embed run`` (a new backbone group of the same store); ``<out stem>.head.skops``: the fine-tuned head
   as a classify model for ``python -m classify predict`` on a store re-embedded with that spec.

Resume
------
After every epoch the whole training state (current, best and initial weights, optimizer, scheduler, threshold
state, early-stopping counters, history) goes to ``<out>.state`` atomically (temporary file, fsync, rename). The same
command continues after the last saved epoch. No RNG state needs saving: every random draw of epoch ``e`` (sample
order, every augmentation, dropout) is seeded from ``(seed, e)``, so an epoch replays identically whether or not the
run was interrupted before it, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from classify import pipeline
from classify.methods.linear import FineTunedHead, LinearProbe
from classify.thresholds import ClassAwareThresholds, classaware_pool_mask
from embed.backbones import Backbone, ClipBackbone, TimmBackbone, load_backbone, parse_spec
from embed.images import load_image
from embed.runner import default_workers, resolve_device, seeded
from embed.sources import ImageSet, from_folder
from store import FeatureStore, image_list_sha256

__all__ = ["FineTuneNet", "FineTunedHead", "FinetuneResult", "finetune", "head_from_model", "parse_unfreeze",
           "select_pseudo_labels", "split_validation", "wise_interpolate"]

logger = logging.getLogger(__name__)

STATE_FORMAT = "fewshot-finetune-state/1"
INIT_METHODS = ("linear", "zeroshot")
DEFAULT_WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)

# Layer groups of open_clip image towers, in timm's group_matcher format (open_clip defines none). Same grouping as
# timm's ViT / ResNet matchers; the (99999,) suffix merges the final norm / projection / pooling into the last block.
_CLIP_VIT_GROUPS = {"stem": r"^conv1|^class_embedding|^positional_embedding|^ln_pre|^patch_embed",
                    "blocks": [(r"^transformer\.resblocks\.(\d+)", None), (r"^ln_post|^proj|^attn_pool", (99999,))]}
_CLIP_RESNET_GROUPS = {"stem": r"^conv\d|^bn\d", "blocks": [(r"^layer(\d+)\.(\d+)", None), (r"^attnpool", (99999,))]}


# ----------------------------------------------------------------------------------------------------------- network
def _trunk_layer_map(trunk: nn.Module) -> dict[str, int]:
    """Parameter name → layer id (0 = stem), with timm's own grouping (the one its layer-wise lr decay uses)."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if hasattr(trunk, "group_matcher"):  # every timm model
        return group_parameters(trunk, trunk.group_matcher(coarse=False), reverse=True)
    if isinstance(trunk, VisionTransformer):
        return group_parameters(trunk, _CLIP_VIT_GROUPS, reverse=True)
    if isinstance(trunk, ModifiedResNet):
        return group_parameters(trunk, _CLIP_RESNET_GROUPS, reverse=True)
    if isinstance(trunk, TimmModel):  # open_clip tower = timm trunk + projection head
        inner = group_parameters(trunk.trunk, trunk.trunk.group_matcher(coarse=False), reverse=True)
        top = max(inner.values()) + 1
        return {n: inner.get(n.removeprefix("trunk."), top) for n, _ in trunk.named_parameters()}
    logger.warning("%s has no known layer grouping: one layer group (no layer-wise lr decay, no last-N unfreezing)",
                   type(trunk).__name__)
    return {n: 0 for n, _ in trunk.named_parameters()}


class FineTuneNet(nn.Module):
    """``backbone features → L2-normalise → linear`` on a timm model or an open_clip image tower.

    ``features`` are exactly what :meth:`embed.backbones.Backbone.encode_images` returns (timm: pooled pre-logits;
    open_clip: ``visual(x)``), so ``forward`` applies the head the way the classify methods apply theirs to the
    store's features.

    Parameters
    ----------
    backbone : Backbone
        From :func:`embed.backbones.load_backbone`. A timm model loses its own classifier (``reset_classifier(0)``,
        so the exported checkpoint has no stale ImageNet head); an open_clip model contributes ``model.visual``, shared
        with ``backbone.model`` (the text tower stays outside this module and is exported unchanged).
    weight : array-like of shape (C, D)
    bias : array-like of shape (C,)
        The head on unit-norm features, e.g. from :func:`head_from_model`.
    bn_train : bool, default=False
        Let BatchNorm layers of trainable blocks update their running statistics in train mode. Off by default:
        few-shot batches give noisy statistics, and with frozen statistics the train-mode network computes the
        features the head was fitted on (a domain shift such as digits vs ImageNet otherwise moves every feature at
        the first step). BatchNorm weights and biases train either way.

    Attributes
    ----------
    trunk : nn.Module
    head : nn.Linear
    n_layers : int
        Layer groups of the trunk (timm's ``group_matcher(coarse=False)``); the head is one more on top.
    """

    def __init__(self, backbone: Backbone, weight, bias, bn_train: bool = False) -> None:
        super().__init__()
        self.bn_train = bool(bn_train)
        if isinstance(backbone, TimmBackbone):
            if getattr(backbone.model, "num_classes", 0):
                backbone.model.reset_classifier(0)
            self.kind, self.trunk = "timm", backbone.model
        elif isinstance(backbone, ClipBackbone):
            self.kind, self.trunk = "clip", backbone.model.visual
        else:
            raise ValueError(f"cannot fine-tune a {type(backbone).__name__}; use a timm:... or clip:... backbone")
        W = torch.as_tensor(np.asarray(weight, dtype=np.float32))  # (C, D)
        b = torch.as_tensor(np.asarray(bias, dtype=np.float32))  # (C,)
        if W.ndim != 2 or W.shape[1] != backbone.dim or b.shape != (W.shape[0],):
            raise ValueError(f"head of shape {tuple(W.shape)} + {tuple(b.shape)} does not fit {backbone.spec} (dim "
                             f"{backbone.dim}); the init model must be fitted on this backbone's features")
        self.head = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(W)
            self.head.bias.copy_(b)
        self.head.to(backbone.device)
        self._layers = _trunk_layer_map(self.trunk)
        self.n_layers = max(self._layers.values(), default=0) + 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, D) un-normalised backbone features."""
        if self.kind == "timm":
            return self.trunk.forward_head(self.trunk.forward_features(x), pre_logits=True)
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C) logits."""
        f = self.features(x)  # (B, D)
        with torch.autocast(device_type=f.device.type, enabled=False):  # the head in float32 even under AMP
            return self.head(F.normalize(f.float(), dim=-1))  # (B, C)

    def layer_of(self, name: str) -> int:
        """Layer id of a parameter of this module (the head is ``n_layers``)."""
        if name.startswith("trunk."):
            return self._layers.get(name[len("trunk."):], self.n_layers - 1)
        return self.n_layers

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's hook for ``create_optimizer_v2(..., layer_decay=)``: a callable name → layer id."""
        return self.layer_of

    def no_weight_decay(self) -> set[str]:
        """timm's hook: the trunk's own no-weight-decay names (position embeddings, class tokens)."""
        names = getattr(self.trunk, "no_weight_decay", None)
        return {f"trunk.{n}" for n in (names() if callable(names) else ())}

    def train(self, mode: bool = True) -> "FineTuneNet":
        """Train mode, except BatchNorm layers that keep their running statistics: all of them unless ``bn_train``,
        else those whose parameters are all frozen (what freezing a layer means). Done by mode rather than with timm's
        ``freeze_batch_norm_2d``, which changes the module type and with it the checkpoint's keys."""
        super().train(mode)
        if mode:
            for m in self.trunk.modules():
                if not isinstance(m, nn.modules.batchnorm._BatchNorm):
                    continue
                params = list(m.parameters(recurse=False))
                if not self.bn_train or (params and not any(p.requires_grad for p in params)):
                    m.eval()
        return self


def parse_unfreeze(unfreeze) -> tuple[str, int]:
    """``"all"`` → ("all", 0), ``"none"`` → ("none", 0), ``"last-N"`` → ("last", N)."""
    text = "none" if unfreeze is None else str(unfreeze).strip().lower()
    if text in ("all", "none"):
        return text, 0
    match = re.fullmatch(r"last[-_](\d+)", text)
    if match and int(match.group(1)) >= 1:
        return "last", int(match.group(1))
    raise ValueError(f"--unfreeze must be all, none or last-N (N >= 1 trunk layer groups, e.g. last-2), "
                     f"not {unfreeze!r}")


def apply_unfreeze(net: FineTuneNet, unfreeze) -> int:
    """Set ``requires_grad``: the head always trains; the trunk per ``unfreeze``. Returns trainable trunk layers.

    ``last-N`` counts the trunk's layer groups from the top, the same groups as layer-wise lr decay (timm's
    ``group_matcher``; final norms / conv heads belong to the last block, as in timm and open_clip's ``lock``).
    """
    mode, n = parse_unfreeze(unfreeze)
    if mode == "last" and n > net.n_layers:
        logger.info("--unfreeze last-%d: the trunk has only %d layer groups; all of them train", n, net.n_layers)
    first = {"all": 0, "none": net.n_layers, "last": max(0, net.n_layers - n)}[mode]
    for name, p in net.named_parameters():
        p.requires_grad = net.layer_of(name) >= first
    return net.n_layers - first


# --------------------------------------------------------------------------------------------------- heads & labels
def _load_fitted(model) -> pipeline.FittedModel:
    return pipeline.load_model(model) if isinstance(model, (str, Path)) else model


def head_from_model(model, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The head ``(W (C, D), b (C,))`` of a fitted ``linear`` / ``zeroshot`` model, rows in the order of ``classes``.

    Parameters
    ----------
    model : str, Path or FittedModel
        A model saved by ``python -m classify fit --method linear|zeroshot``.
    classes : list of str
        Class names of the data being fine-tuned on (matched by name).
    """
    fitted = _load_fitted(model)
    if fitted.method not in INIT_METHODS or not hasattr(fitted.estimator, "linear_head"):
        raise ValueError(f"--init must be a model of method {' or '.join(INIT_METHODS)} (a head on the backbone's "
                         f"features), not {fitted.method!r}; fit one with `python -m classify fit --method linear "
                         "--store S --out M`")
    if len(fitted.backbones) != 1:
        raise ValueError(f"--init model was fitted on {len(fitted.backbones)} backbones; fit it on the one backbone "
                         "being fine-tuned")
    W, b = fitted.estimator.linear_head()  # (C', D), (C',) rows follow estimator.classes_
    names = [fitted.classes[int(c)] for c in fitted.estimator.classes_]
    if sorted(names) != sorted(classes):
        raise ValueError(f"--init model predicts classes {names} but the data has {list(classes)}; fit it on a store "
                         "of this data folder")
    order = [names.index(c) for c in classes]
    return np.asarray(W)[order], np.asarray(b)[order]


def split_validation(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: per class ``round(fraction * n)`` rows (at least one when the class has two
    or more rows and ``fraction > 0``), never a class's last row."""
    labels = np.asarray(labels)
    val = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return val
    rng = np.random.default_rng([seed, 17])
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        val[rows[:k]] = True
    return val


def select_pseudo_labels(model, store: str | Path, images: ImageSet, train_counts: np.ndarray, threshold: float,
                         steps: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Confident predictions of a fitted classify model on the store's unlabeled rows, as image rows of ``images``.

    Selection is ``selftrain``'s "classaware" rule, the same function
    (:func:`~classify.thresholds.classaware_pool_mask`): thresholds starting at ``threshold`` with the labeled class
    prior as target, stepped ``steps`` times on the pool, each class keeping the most lenient threshold of the EMA
    window.

    Returns
    -------
    rows : ndarray (n,) int
        Rows of ``images`` (the same ids as the store's).
    labels : ndarray (n,) int
        Class index in ``images.classes``.
    report : dict
        JSON-able counts per class and final thresholds.
    """
    fitted = _load_fitted(model)
    with FeatureStore(store) as fs:
        fitted.check_store(fs)
        data = pipeline.load_data(fs, fitted.backbones, "unlabeled", views=fitted.views)
    if not len(data.ids):
        raise ValueError(f"{store} has no decoded unlabeled rows to pseudo-label; drop --pseudo or embed unlabeled/")
    names = [fitted.classes[int(c)] for c in fitted.estimator.classes_]
    unknown = sorted(set(names) - set(images.classes))
    if unknown:
        raise ValueError(f"--pseudo model predicts classes {unknown} that the data folder lacks; use a model fitted on "
                         "a store of this data folder")
    proba = np.zeros((len(data.ids), len(images.classes)))  # (n_u, C)
    proba[:, [images.classes.index(n) for n in names]] = fitted.estimator.predict_proba(data.X)
    counts = np.asarray(train_counts, dtype=np.float64)
    thresholds = ClassAwareThresholds(len(images.classes), tau0=threshold,
                                      target=counts if np.all(counts > 0) else None)
    mask, details = classaware_pool_mask(proba, thresholds, steps)  # (n_u,): selftrain's rule, the same code
    index = {image_id: row for row, image_id in enumerate(images.ids)}
    missing = [i for i in data.ids[mask] if i not in index]
    if missing:
        raise ValueError(f"{len(missing)} unlabeled ids of {store} (e.g. {missing[0]}) are not in the data folder; "
                         "pass the store built from this --data folder")
    rows = np.array([index[i] for i in data.ids[mask]], dtype=np.int64)
    labels = proba[mask].argmax(axis=1).astype(np.int64)
    report = {"model": fitted.method, "n_pool": int(len(data.ids)), "n_selected": int(mask.sum()),
              "per_class": np.bincount(labels, minlength=len(images.classes)).tolist(),
              **details}
    logger.info("pseudo-labels from %s: %d of %d unlabeled rows kept, per class %s", fitted.method, mask.sum(),
                len(mask), report["per_class"])
    return rows, labels, report


# -------------------------------------------------------------------------------------------------------------- data
class _Views(Dataset):
    """Item k = (row, seed): the decoded image of ``row`` through every transform, each seeded from ``seed``."""

    def __init__(self, paths: Sequence[Path], items: Sequence[tuple[int, int]], transforms: Sequence[Callable],
                 target_size: int) -> None:
        self.paths, self.items, self.transforms, self.target_size = paths, items, transforms, target_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        row, seed = self.items[k]
        loaded = load_image(self.paths[row], target_size=self.target_size)
        if loaded.error is not None:
            return row, None
        views = []
        for v, transform in enumerate(self.transforms):
            # seeded per (item, view): identical views whatever the worker count or resume point (as embed's views)
            with seeded((seed + 1_000_003 * v) % 2**31):
                views.append(transform(loaded.image))
        return row, torch.stack(views)  # (V, 3, H, W)


def _collate(items):
    good = [it for it in items if it[1] is not None]
    rows = torch.as_tensor([it[0] for it in good], dtype=torch.long)
    return rows, (torch.stack([it[1] for it in good]) if good else None)  # (B,), (B, V, 3, H, W)


def _item_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] % 2**31)


# ------------------------------------------------------------------------------------------------------------ result
@dataclass
class FinetuneResult:
    """What a ``finetune`` run produced (JSON-able through :meth:`to_dict`)."""

    spec: str  # the new backbone spec, e.g. timm:<name>@<out>
    checkpoint: str
    head_model: str
    image_size: int | None
    epochs_run: int
    best_epoch: int
    alpha: float
    alpha_chosen_by: str  # validation, fixed, no validation, init saw the validation rows, no fine-tuned epoch
    val_accuracy_initial: float | None
    val_accuracy: float | None  # of the exported network
    resumed_from: int
    seconds: float
    history: list = field(default_factory=list)
    pseudo: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------- train
def wise_interpolate(initial: dict, finetuned: dict, alpha: float) -> dict:
    """WiSE-FT weights ``(1 - alpha) * initial + alpha * finetuned`` for every floating tensor of two state_dicts.

    ``torch.lerp`` is exact at both ends (alpha 0 gives ``initial`` bit for bit, alpha 1 ``finetuned``). Integer
    tensors (BatchNorm batch counters) come from ``finetuned`` when ``alpha > 0``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE alpha must be in [0, 1], got {alpha}")
    out = {}
    for key, a in initial.items():
        b = finetuned[key]
        if a.is_floating_point():
            out[key] = torch.lerp(a, b.to(a.dtype), float(alpha))
        else:
            out[key] = (b if alpha > 0 else a).clone()
    return out


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _atomic_save(obj, path: Path) -> None:
    """Write to a temporary file beside ``path``, fsync, rename: a kill at any moment leaves the old or the new file,
    and a failed write (disk full) removes its temporary file."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(obj, str(tmp))
        else:
            with open(tmp, "wb") as handle:
                torch.save(obj, handle)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_state(path: Path) -> dict:
    """The training state beside a checkpoint, loaded with ``weights_only`` (tensors and plain values only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refusals and damaged files raise many types; one line for the user
        reason = "it holds Python objects, which could run code" if "weights_only" in str(err) else \
            f"{type(err).__name__}"
        raise ValueError(f"{path} is not a fine-tuning state written by this suite ({reason}); delete it to start "
                         "over") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a fine-tuning state written by this suite; delete it to start over")
    return state


def _score_key(score: dict) -> tuple[float, float]:
    """Higher is better: accuracy, then lower loss."""
    return score["accuracy"], -score["loss"]


class _Trainer:
    """One fine-tuning run; see :func:`finetune` (this class only keeps the pieces together)."""

    def __init__(self, images: ImageSet, backbone: Backbone, net: FineTuneNet, device: torch.device, cfg: dict,
                 train_rows: np.ndarray, train_y: np.ndarray, val_rows: np.ndarray, pool_rows: np.ndarray,
                 workers: int, progress: bool) -> None:
        self.images, self.backbone, self.net, self.device, self.cfg = images, backbone, net, device, cfg
        self.paths = images.paths
        self.train_rows, self.train_y, self.val_rows, self.pool_rows = train_rows, train_y, val_rows, pool_rows
        self.workers, self.progress = workers, progress
        self.cuda = device.type == "cuda"
        self.target_size = math.ceil(backbone.input_size / backbone.preprocessing.get("crop_pct", 1.0))
        self.steps_per_epoch = max(1, int(round(len(train_rows) / cfg["batch_size"])))
        self.use_unlabeled = len(pool_rows) > 0 and cfg["fixmatch_weight"] > 0 and cfg["mu"] > 0
        self.unlabeled_batch = min(len(pool_rows), int(cfg["mu"] * cfg["batch_size"])) if self.use_unlabeled else 0
        labeled = images.labels[train_rows]
        counts = np.bincount(labeled[labeled >= 0], minlength=len(images.classes)).astype(np.float64)  # (C,) prior
        self.thresholds = ClassAwareThresholds(len(images.classes), tau0=cfg["threshold"],
                                               target=counts if np.all(counts > 0) else None)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        # bfloat16 needs no gradient scaler (same choice as embed's runner)
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.cuda)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def _loader(self, items, transforms, batch_size=None, batch_sampler=None) -> DataLoader:
        batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size}
        return DataLoader(_Views(self.paths, items, transforms, self.target_size), **batching, num_workers=self.workers,
                          collate_fn=_collate, pin_memory=self.cuda, prefetch_factor=4 if self.workers else None)

    @torch.no_grad()
    def evaluate(self, rows: np.ndarray | None = None) -> dict | None:
        """Accuracy and mean cross-entropy on the validation rows (eval transform), or None without them."""
        rows = self.val_rows if rows is None else rows
        if not len(rows):
            return None
        self.net.eval()
        correct, loss, n = 0, 0.0, 0
        labels = torch.as_tensor(self.images.labels)
        loader = self._loader([(int(r), 0) for r in rows], [self.backbone.eval_transform],
                              batch_size=2 * self.cfg["batch_size"])
        with self._autocast():
            for got, x in loader:
                if x is None:
                    continue
                logits = self.net(self._to_device(x[:, 0])).float()  # (B, C)
                y = labels[got].to(self.device)
                correct += int((logits.argmax(1) == y).sum())
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                n += len(got)
        return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "n": n}

    def train_epoch(self, epoch: int, optimizer, scheduler, num_updates: int) -> tuple[dict, int]:
        """One pass over the (shuffled) training rows; returns the epoch's stats and the updated step count."""
        cfg = self.cfg
        torch.manual_seed(_item_seed(cfg["seed"], epoch, 0))  # dropout / drop-path of this epoch
        rng = np.random.default_rng([cfg["seed"], epoch, 1])
        order = rng.permutation(self.train_rows)
        lab_items = [(int(r), _item_seed(cfg["seed"], epoch, 2, k)) for k, r in enumerate(order)]
        chunks = [c.tolist() for c in np.array_split(np.arange(len(order)), self.steps_per_epoch)]
        # near-equal batches (never a lone image, which BatchNorm cannot train on)
        lab_loader = self._loader(lab_items, [self.backbone.augment_transforms["weak"]], batch_sampler=chunks)
        unl_loader = [None] * self.steps_per_epoch
        if self.use_unlabeled:
            need = self.steps_per_epoch * self.unlabeled_batch
            picks = np.concatenate([rng.permutation(self.pool_rows)
                                    for _ in range(math.ceil(need / len(self.pool_rows)))])[:need]
            unl_items = [(int(r), _item_seed(cfg["seed"], epoch, 3, k)) for k, r in enumerate(picks)]
            unl_loader = self._loader(unl_items, [self.backbone.augment_transforms["weak"],
                                                  self.backbone.augment_transforms["strong"]],
                                      batch_size=self.unlabeled_batch)
        self.net.train()
        labels = torch.as_tensor(self.train_y)
        sums = {"loss": 0.0, "loss_labeled": 0.0, "loss_unlabeled": 0.0, "mask_rate": 0.0}
        steps = 0
        bar = tqdm(zip(lab_loader, unl_loader), total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                   unit="step", disable=not self.progress, leave=False)
        for (rows_l, xl), unl in bar:
            if xl is None:
                continue
            b = len(rows_l)
            parts = [xl[:, 0]]
            u = 0
            if unl is not None and unl[1] is not None:
                u = len(unl[0])
                parts += [unl[1][:, 0], unl[1][:, 1]]
            x = self._to_device(torch.cat(parts))  # (b + 2u, 3, H, W): one forward, shared BatchNorm statistics
            y = labels[rows_l].to(self.device)
            with self._autocast():
                logits = self.net(x).float()  # (b + 2u, C)
            loss_l = F.cross_entropy(logits[:b], y)
            loss_u = torch.zeros((), device=self.device)
            mask_rate = 0.0
            if u:
                with torch.no_grad():
                    p_weak = logits[b:b + u].detach().softmax(dim=1)  # (u, C)
                    mask = self.thresholds.step(p_weak)  # (u,) bool, the shared class-aware rule
                    target = p_weak.argmax(dim=1)  # (u,)
                per_row = F.cross_entropy(logits[b + u:], target, reduction="none")  # (u,)
                loss_u = (per_row * mask.float()).mean()
                mask_rate = float(mask.float().mean())
            loss = loss_l + cfg["fixmatch_weight"] * loss_u
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            num_updates += 1
            scheduler.step_update(num_updates)
            steps += 1
            for key, value in (("loss", loss.item()), ("loss_labeled", loss_l.item()),
                               ("loss_unlabeled", loss_u.item()), ("mask_rate", mask_rate)):
                sums[key] += value
            bar.set_postfix(loss=f"{loss.item():.3f}", mask=f"{mask_rate:.2f}")
        bar.close()
        stats = {k: v / max(steps, 1) for k, v in sums.items()}
        stats["lr"] = max(g["lr"] for g in optimizer.param_groups)
        stats["steps"] = steps
        return stats, num_updates


def _check_config(saved: dict, cfg: dict, state_path: Path) -> None:
    diff = sorted(k for k in set(saved) | set(cfg) if saved.get(k) != cfg.get(k))
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {cfg.get(k)!r}" for k in diff[:6])
        raise ValueError(f"{state_path} holds a run with other settings ({details}); rerun with the same settings to "
                         f"resume, or delete {state_path} to start over")


def _preprocessing_matches(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(json.loads(json.dumps(b, default=str)),
                                                                    sort_keys=True, default=str)


def finetune(data: str | Path, backbone: str, out: str | Path, *, init=None, unfreeze="all", pseudo=None,
             store: str | Path | None = None, epochs: int = 20, lr: float = 1e-4, batch_size: int = 32,
             device: str = "auto", image_size: int | None = None, seed: int = 0, weight_decay: float = 0.05,
             layer_decay: float = 0.8, warmup_epochs: float = 1.0, val_fraction: float = 0.2, patience: int = 5,
             fixmatch_weight: float = 1.0, mu: int = 2, threshold: float = 0.95, pseudo_threshold: float = 0.5,
             pseudo_steps: int = 1000, wise_alphas: Sequence[float] = DEFAULT_WISE_ALPHAS, bn_train: bool = False,
             workers: int | None = None, progress: bool = True,
             callback: Callable[[int, dict], None] | None = None) -> FinetuneResult:
    """Fine-tune a timm model or an open_clip image tower on a challenge-layout folder (see the module docstring).

    Parameters
    ----------
    data : path
        ``train/<class>/*`` labeled images, ``unlabeled/*`` the pool for FixMatch (``test/`` is not used).
    backbone : str
        ``timm:<name>[@ckpt]`` or ``clip:<arch>/<tag>`` / ``clip:<arch>@<ckpt>``.
    out : path
        The fine-tuned backbone checkpoint to write (``.pth``, or ``.safetensors``).
    init : path or FittedModel, optional
        A ``linear`` or ``zeroshot`` classify model fitted on this backbone's features of this data; None fits a
        linear probe on the training split's frozen features.
    unfreeze : {"all", "none", "last-N"}
        Trainable trunk layer groups (the head always trains).
    pseudo : path or FittedModel, optional
        A classify model (e.g. ``selftrain``, ``labelprop``) whose confident predictions on ``store``'s unlabeled
        rows become extra labeled images. Needs ``store``.
    store : path, optional
        The feature store of this data folder: needed by ``pseudo``; with ``init`` it supplies the image size the
        init model's features were computed at and checks that the preprocessing matches.
    epochs, lr, batch_size, weight_decay, layer_decay, warmup_epochs
        Epochs (passes over the training rows), AdamW peak lr / weight decay, lr scale ``layer_decay ** depth``
        below the head, linear warm-up length in epochs.
    device : {"auto", "cpu", "cuda"}
        CUDA runs use bfloat16 autocast and channels-last.
    image_size : int, optional
        Square input side (default: the backbone's, or the init model's store's).
    seed : int
        Seeds the validation split, sampling, augmentations and dropout.
    val_fraction, patience
        Share of each class's labeled rows held out for early stopping and WiSE alpha; epochs without improvement
        before stopping. ``val_fraction=0``: no validation, the last epoch is kept, alpha is 1 (or the one value of
        ``wise_alphas``).
    fixmatch_weight, mu, threshold
        Unlabeled loss weight, unlabeled images per labeled image in a batch, initial class-aware threshold.
    pseudo_threshold, pseudo_steps
        Class-aware selection of ``pseudo`` labels: ``selftrain``'s ``tau0`` and ``classaware_steps`` (same defaults).
    wise_alphas : sequence of float
        Candidate WiSE-FT mixing weights of the fine-tuned weights.
    bn_train : bool
        Update BatchNorm running statistics while training (see :class:`FineTuneNet`); off by default.
    workers : int, optional
        Decode workers (default: cores, at most 8).
    progress : bool
        tqdm bar per epoch.
    callback : callable, optional
        ``callback(epoch, stats)`` after each epoch's checkpoint is written (tests use it to simulate a crash).

    Returns
    -------
    FinetuneResult
    """
    t_start = time.perf_counter()
    images = from_folder(data)
    parsed = parse_spec(backbone)
    out = Path(out).expanduser().resolve()
    if parsed.path is not None and Path(parsed.path) == out:
        raise ValueError(f"--out {out} is the checkpoint being fine-tuned; write the result to another file")
    if out.suffix in (".joblib", ".skops"):
        raise ValueError(f"--out {out}: give a checkpoint file name such as ft.pth (the head goes beside it)")
    mode, n_unfreeze = parse_unfreeze(unfreeze)
    if int(epochs) < 0 or int(batch_size) < 1 or float(lr) <= 0 or not 0 <= float(val_fraction) < 1 \
            or int(patience) < 1:
        raise ValueError("need --epochs >= 0, --batch-size >= 1, --lr > 0, --patience >= 1 and 0 <= --val-fraction "
                         "< 1")
    # a confidence threshold above 1 is never reached: FixMatch (or the pseudo-labels) would silently do nothing
    for flag, value in (("--threshold", threshold), ("--pseudo-threshold", pseudo_threshold)):
        if not 0 <= float(value) <= 1:
            raise ValueError(f"{flag} is a confidence in [0, 1], got {value!r}; 0.95 is FixMatch's usual value")
    if float(fixmatch_weight) < 0 or int(mu) < 0 or int(pseudo_steps) < 0:
        raise ValueError("need --fixmatch-weight >= 0, --mu >= 0 and --pseudo-steps >= 0 (0 turns that part off)")
    alphas = sorted({float(a) for a in (pipeline.as_list(wise_alphas) if not isinstance(wise_alphas, (list, tuple))
                                        else wise_alphas)})
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise ValueError(f"wise_alphas must be values in [0, 1], got {wise_alphas!r}")
    if pseudo is not None and store is None:
        raise ValueError("--pseudo needs --store S: the feature store of this data folder that the pseudo model was "
                         "fitted on")
    fitted_init = _load_fitted(init) if init is not None else None
    fitted_pseudo = _load_fitted(pseudo) if pseudo is not None else None  # both models read before anything heavy
    if fitted_init is not None:
        head_from_model(fitted_init, images.classes)  # refuse a wrong --init before anything heavy
    if store is not None and fitted_init is not None:
        with FeatureStore(store) as fs:
            fitted_init.check_store(fs)
            store_pp = fs.provenance(fitted_init.backbones[0])["preprocessing"]
        if image_size is None:
            image_size = store_pp.get("image_size_override")
    elif fitted_init is not None:
        logger.info("--init without --store: the image size is not checked against the init model's features "
                    "(pass --store or the same --image-size as when embedding)")
    torch_device = resolve_device(device)
    workers = default_workers(torch_device) if workers is None else int(workers)

    labeled = np.flatnonzero((np.asarray(images.splits) == "train") & (images.labels >= 0))
    if not labeled.size:
        raise ValueError(f"{images.root} has no labeled images; put them in train/<class>/")
    counts = np.bincount(images.labels[labeled], minlength=len(images.classes))
    if np.any(counts == 0):
        empty = [images.classes[c] for c in np.flatnonzero(counts == 0)]
        raise ValueError(f"classes {empty} have no labeled images; add some to train/<class>/ (or remove the folder)")
    val_mask = split_validation(images.labels[labeled], float(val_fraction), seed)
    train_rows, val_rows = labeled[~val_mask], labeled[val_mask]
    pool_rows = np.flatnonzero(np.asarray(images.splits) == "unlabeled")

    cfg = {"data": str(Path(images.root).resolve()), "backbone": str(parsed), "init": None if init is None else
           str(Path(init).resolve()) if isinstance(init, (str, Path)) else "object", "unfreeze": f"{mode}-{n_unfreeze}"
           if mode == "last" else mode, "pseudo": None if pseudo is None else str(pseudo), "epochs": int(epochs),
           "lr": float(lr), "batch_size": int(batch_size), "image_size": image_size, "seed": int(seed),
           "weight_decay": float(weight_decay), "layer_decay": float(layer_decay),
           "warmup_epochs": float(warmup_epochs), "val_fraction": float(val_fraction), "patience": int(patience),
           "fixmatch_weight": float(fixmatch_weight), "mu": int(mu), "threshold": float(threshold),
           "pseudo_threshold": float(pseudo_threshold), "pseudo_steps": int(pseudo_steps), "wise_alphas": alphas,
           "bn_train": bool(bn_train),
           "fingerprint": image_list_sha256(images.ids, images.splits, images.labels, images.classes)}
    state_path = out.with_name(out.name + ".state")
    head_path = out.with_suffix(".head.skops")
    state = None
    if state_path.is_file():
        state = _load_state(state_path)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{state_path} is not a fine-tuning state; delete it to start over")
        _check_config(state["config"], cfg, state_path)
        if state.get("finished"):
            if not out.is_file():
                raise ValueError(f"{state_path} says this run finished but {out} is missing; delete {state_path} to "
                                 "fine-tune again")
            logger.info("%s: this run already finished (delete %s to fine-tune again)", out, state_path)
            return FinetuneResult(**state["result"])

    loaded = load_backbone(parsed, device=str(torch_device), image_size=image_size)
    if store is not None and fitted_init is not None and not _preprocessing_matches(loaded.preprocessing, store_pp):
        raise ValueError(f"the init model's features in {store} were computed with other preprocessing "
                         f"({store_pp}) than {loaded.spec} now uses ({loaded.preprocessing}); pass the same "
                         "--image-size as when embedding")
    if fitted_init is not None:
        spec0 = fitted_init.backbones[0]
        want = fitted_init.backbone_weights.get(spec0)
        if want is not None and want != loaded.weights_sha256:
            raise ValueError(f"--init model was fitted on features of {spec0} (weights {want[:12]}), not of "
                             f"{loaded.spec} (weights {loaded.weights_sha256[:12]}); fine-tune the backbone it was "
                             "fitted on")

    # A linear --init model was fitted on every labeled row of the store, the validation rows included: comparing the
    # initial network on them is biased in its favour. A zero-shot model never saw a label.
    contaminated = fitted_init is not None and fitted_init.method != "zeroshot"
    pseudo_report = None
    train_y = np.full(len(images), -1, dtype=np.int64)
    train_y[train_rows] = images.labels[train_rows]
    if state is not None:
        pseudo_rows, pseudo_y = np.asarray(state["pseudo_rows"], np.int64), np.asarray(state["pseudo_y"], np.int64)
        pseudo_report = state.get("pseudo_report")
    elif pseudo is not None:
        pseudo_rows, pseudo_y, pseudo_report = select_pseudo_labels(
            fitted_pseudo, store, images, np.bincount(images.labels[train_rows], minlength=len(images.classes)),
            pseudo_threshold, pseudo_steps)
    else:
        pseudo_rows, pseudo_y = np.zeros(0, np.int64), np.zeros(0, np.int64)
    train_y[pseudo_rows] = pseudo_y
    all_train = np.concatenate([train_rows, pseudo_rows])
    pool_rows = np.setdiff1d(pool_rows, pseudo_rows)

    # ---- the network and its initial head
    if state is not None:
        W0 = state["initial"]["head.weight"].numpy()
        b0 = state["initial"]["head.bias"].numpy()
    elif fitted_init is not None:
        W0, b0 = head_from_model(fitted_init, images.classes)
    else:
        W0, b0 = _probe_head(images, loaded, train_rows, torch_device, workers, seed)
    net = FineTuneNet(loaded, W0, b0, bn_train=bn_train)
    if torch_device.type == "cuda":
        net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    trainable_layers = apply_unfreeze(net, unfreeze)
    n_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    logger.info("%s: %d labeled train + %d pseudo-labeled + %d validation images, %d unlabeled pool; %d of %d trunk "
                "layer groups train (%d parameters)", loaded.spec, len(train_rows), len(pseudo_rows), len(val_rows),
                len(pool_rows), trainable_layers, net.n_layers, n_trainable)
    trainer = _Trainer(images, loaded, net, torch_device, cfg, all_train, train_y, val_rows, pool_rows, workers,
                       progress)
    optimizer = create_optimizer_v2(net, opt="adamw", lr=float(lr), weight_decay=float(weight_decay),
                                    layer_decay=float(layer_decay) if layer_decay != 1 else None)
    total_steps = max(1, int(epochs) * trainer.steps_per_epoch)
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=float(lr) * 0.01,
                                  warmup_t=int(round(float(warmup_epochs) * trainer.steps_per_epoch)),
                                  warmup_lr_init=float(lr) * 0.01, t_in_epochs=False)

    if state is not None:
        net.load_state_dict(state["current"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        trainer.thresholds.load_state_dict(state["thresholds"])
        initial, best = state["initial"], state["best"]
        start_epoch, best_epoch, best_score = int(state["epoch"]), int(state["best_epoch"]), state["best_score"]
        num_updates, history, score0 = int(state["num_updates"]), list(state["history"]), state["score_initial"]
        logger.info("resuming %s after epoch %d of %d", state_path, start_epoch, epochs)
    else:
        initial = _cpu_state(net)
        score0 = trainer.evaluate()
        start_epoch, num_updates, history = 0, 0, []
        best, best_epoch, best_score = None, 0, None
        if score0 is not None:
            logger.info("initial network: validation accuracy %.4f, loss %.4f", score0["accuracy"], score0["loss"])
            if not contaminated:  # the initial head never saw the validation rows: epoch 0 is a candidate
                best, best_score = initial, score0
            else:
                logger.warning("the --init model was fitted on every labeled row, the validation rows included, so "
                               "the initial network's validation score is optimistic: early stopping chooses among "
                               "fine-tuned epochs only, and WiSE alpha is not chosen by validation (it would pick 0)")
    resumed_from = start_epoch
    validated = len(val_rows) > 0

    def save_state(epoch: int) -> None:
        _atomic_save({"format": STATE_FORMAT, "finished": False, "config": cfg, "epoch": epoch,
                      "current": _cpu_state(net), "initial": initial, "best": best, "best_epoch": best_epoch,
                      "best_score": best_score, "score_initial": score0, "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "thresholds": trainer.thresholds.state_dict(),
                      "num_updates": num_updates, "history": history, "pseudo_rows": pseudo_rows.tolist(),
                      "pseudo_y": pseudo_y.tolist(), "pseudo_report": pseudo_report}, state_path)

    out.parent.mkdir(parents=True, exist_ok=True)
    stale = start_epoch - best_epoch  # epochs since the best one
    for epoch in range(start_epoch, int(epochs)):
        if validated and best_score is not None and stale >= patience:
            logger.info("early stop: no validation improvement for %d epochs (best: epoch %d)", stale, best_epoch)
            break
        t0 = time.perf_counter()
        stats, num_updates = trainer.train_epoch(epoch, optimizer, scheduler, num_updates)
        score = trainer.evaluate()
        stats.update(epoch=epoch + 1, seconds=time.perf_counter() - t0,
                     val_accuracy=None if score is None else score["accuracy"],
                     val_loss=None if score is None else score["loss"],
                     thresholds_mean=float(np.mean(trainer.thresholds.thresholds)))
        history.append(stats)
        if score is None:
            best_epoch = epoch + 1  # no validation: the last epoch is kept (best stays None: it is the network)
        elif best_score is None or _score_key(score) > _score_key(best_score):
            best, best_epoch, best_score, stale = _cpu_state(net), epoch + 1, score, 0
        else:
            stale += 1
        logger.info("epoch %d/%d: loss %.4f (labeled %.4f, unlabeled %.4f, mask %.2f), lr %.2e%s, %.1f s", epoch + 1,
                    epochs, stats["loss"], stats["loss_labeled"], stats["loss_unlabeled"], stats["mask_rate"],
                    stats["lr"], "" if score is None else f", val acc {score['accuracy']:.4f} loss {score['loss']:.4f}",
                    stats["seconds"])
        save_state(epoch + 1)
        if callback is not None:
            callback(epoch, stats)
    epochs_run = len(history)
    if best is None:
        best = _cpu_state(net)

    # ---- WiSE-FT: alpha by validation where the validation rows are clean
    if best_epoch == 0:
        alpha, alpha_by = 0.0, "no fine-tuned epoch"  # none beat the initial network (or no epoch ran)
    elif len(alphas) == 1:
        alpha, alpha_by = alphas[0], "fixed"
    elif not validated:
        alpha, alpha_by = 1.0, "no validation"
        logger.info("no validation rows: WiSE alpha = 1 (the fine-tuned weights)")
    elif contaminated:
        alpha, alpha_by = min(alphas, key=lambda a: (abs(a - 0.5), -a)), "init saw the validation rows"
        logger.info("WiSE alpha = %.2f (WiSE-FT's default without a clean validation split; pass one value in "
                    "wise_alphas to choose another)", alpha)
    else:
        scored = []
        for a in alphas:
            net.load_state_dict(wise_interpolate(initial, best, a))
            scored.append((_score_key(trainer.evaluate()), a))
            logger.info("WiSE alpha %.2f: validation accuracy %.4f, loss %.4f", a, scored[-1][0][0], -scored[-1][0][1])
        alpha, alpha_by = max(scored)[1], "validation"  # best accuracy, then lowest loss, then the larger alpha
    net.load_state_dict(wise_interpolate(initial, best, alpha))
    final_score = trainer.evaluate()

    # ---- export: backbone checkpoint, verified through the same loader embed uses; head as a classify model
    exported = _cpu_state(net.trunk) if net.kind == "timm" else _cpu_state(loaded.model)
    _atomic_save(exported, out)
    new_spec = parse_spec(f"{parsed.kind}:{parsed.name}@{out}")
    check = load_backbone(new_spec, device="cpu", image_size=image_size)
    seconds = time.perf_counter() - t_start
    head = FineTunedHead(net.head.weight.detach().double().cpu().numpy(),
                         net.head.bias.detach().double().cpu().numpy()).fit(np.zeros((1, loaded.dim)))
    pipeline.FittedModel(estimator=head, method="finetune", params={k: v for k, v in cfg.items() if k != "fingerprint"},
                         backbones=[str(new_spec)], combine="concat", store_fingerprint=cfg["fingerprint"],
                         classes=list(images.classes), fit_seconds=seconds,
                         backbone_weights={str(new_spec): check.weights_sha256}).save(head_path)
    result = FinetuneResult(spec=str(new_spec), checkpoint=str(out), head_model=str(head_path), image_size=image_size,
                            epochs_run=epochs_run, best_epoch=best_epoch, alpha=float(alpha),
                            alpha_chosen_by=alpha_by,
                            val_accuracy_initial=None if score0 is None else score0["accuracy"],
                            val_accuracy=None if final_score is None else final_score["accuracy"],
                            resumed_from=resumed_from, seconds=seconds, history=history, pseudo=pseudo_report)
    # the finished state is small: the checkpoint is the result; a rerun of the same command is a no-op
    _atomic_save({"format": STATE_FORMAT, "finished": True, "config": cfg, "result": result.to_dict()}, state_path)
    logger.info("wrote %s (best epoch %d, WiSE alpha %.2f) and %s in %.1f s", out, best_epoch, alpha, head_path,
                seconds)
    return result


def _probe_head(images: ImageSet, backbone: Backbone, rows: np.ndarray, device: torch.device, workers: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LP-FT's first stage: a :class:`LinearProbe` on the frozen features of ``rows`` (eval transform)."""
    target = math.ceil(backbone.input_size / backbone.preprocessing.get("crop_pct", 1.0))
    loader = DataLoader(_Views(images.paths, [(int(r), 0) for r in rows], [backbone.eval_transform], target),
                        batch_size=64, num_workers=workers, collate_fn=_collate)
    feats, got_rows = [], []
    cuda = device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext():
        for got, x in loader:
            if x is None:
                continue
            x = x[:, 0].to(device)
            feats.append(backbone.encode_images(x.contiguous(memory_format=torch.channels_last) if cuda else x)[0]
                         .cpu().numpy())  # (B, D)
            got_rows.append(got.numpy())
    if not feats:
        raise ValueError("no labeled training image could be decoded")
    X, y = np.concatenate(feats), images.labels[np.concatenate(got_rows)]  # (n, D), (n,)
    missing = sorted(set(range(len(images.classes))) - set(np.unique(y).tolist()))
    if missing:
        raise ValueError(f"classes {[images.classes[c] for c in missing]} have no decodable training image")
    probe = LinearProbe(random_state=seed).fit(X, y)
    logger.info("initial head: linear probe (C=%g) on %d frozen training features", probe.C_, len(y))
    return probe.linear_head()
