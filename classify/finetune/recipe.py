"""``finetune()``: the recipe of one run, from a data folder to a checkpoint ``embed run`` loads and a head."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from classify import pipeline
from classify.finetune.heads import (
    head_from_model,
    load_fitted,
    probe_head,
    select_pseudo_labels,
    split_validation,
)
from classify.finetune.network import (
    FineTuneNet,
    apply_unfreeze,
    cpu_state,
    parse_unfreeze,
    wise_interpolate,
)
from classify.finetune.state import (
    STATE_FORMAT,
    FinetuneResult,
    Progress,
    atomic_save,
    preprocessing_matches,
    previous_state,
)
from classify.finetune.schedule import optimizer_and_schedule, say_how_far_weights_moved
from classify.finetune.trainer import Trainer, score_key
from classify.methods.linear import FineTunedHead
from embed.backbones import Backbone, load_backbone, parse_spec
from embed.engines.local import default_workers, resolve_device
from embed.sources import ImageSet, from_folder
from store import FeatureStore, image_list_sha256
from store.layout import rows_sha256
from store.clitools import as_list
from store.validation import UserError

log = logging.getLogger(__name__)

DEFAULT_WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: images per step by device when --batch-size / --mu are not given: a step holds batch_size * (1 + 2 * mu) images
#: (labeled, then weak + strong views of the unlabeled ones), and on a CPU activations live in RAM. The CPU default
#: keeps the README example within a laptop's 8 GB (`python -m benchmarks finetune` records the peak).
STEP_DEFAULTS = {"cuda": {"batch_size": 32, "mu": 2}, "cpu": {"batch_size": 16, "mu": 1}}


def finetune(data: str | Path, backbone: str, out: str | Path, *, init=None, unfreeze="all", pseudo=None,
             store: str | Path | None = None, epochs: int = 20, lr: float = 1e-4, batch_size: int | None = None,
             device: str = "auto", image_size: int | None = None, seed: int = 0, weight_decay: float = 0.05,
             layer_decay: float = 0.8, warmup_epochs: float = 1.0, val_fraction: float = 0.2, patience: int = 5,
             fixmatch_weight: float = 1.0, mu: int | None = None, threshold: float = 0.95,
             pseudo_threshold: float = 0.5, pseudo_steps: int = 1000,
             wise_alphas: Sequence[float] = DEFAULT_WISE_ALPHAS, bn_train: bool = False, workers: int | None = None,
             progress: bool = True,
             callback: Callable[[int, dict], None] | None = None) -> FinetuneResult:
    """Fine-tune a timm model or an open_clip image tower on a split-folder layout (see the module docstring).

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
        below the head, linear warm-up length in epochs (at most a tenth of the run). ``batch_size`` None: 32 on
        CUDA, 16 on a CPU (:data:`STEP_DEFAULTS`).
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
        Unlabeled loss weight, unlabeled images per labeled image in a batch (None: 2 on CUDA, 1 on a CPU), initial
        class-aware threshold.
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
    torch_device = resolve_device(device)
    batch_size, mu = _step_size(torch_device, batch_size, mu)
    alphas = _check_flags(parsed, out, unfreeze, epochs, batch_size, lr, val_fraction, patience, threshold,
                          pseudo_threshold, fixmatch_weight, mu, pseudo_steps, wise_alphas, pseudo, store)
    fitted_init = load_fitted(init) if init is not None else None
    fitted_pseudo = load_fitted(pseudo) if pseudo is not None else None  # both models read before anything heavy
    store_pp, image_size = _init_store_preprocessing(fitted_init, images, store, image_size)
    workers = default_workers(torch_device) if workers is None else int(workers)
    train_rows, val_rows, pool_rows = _split_rows(images, val_fraction, seed)

    cfg = _config(images, parsed, init, unfreeze, pseudo, alphas, image_size, epochs=epochs, lr=lr,
                  batch_size=batch_size, seed=seed, weight_decay=weight_decay, layer_decay=layer_decay,
                  warmup_epochs=warmup_epochs, val_fraction=val_fraction, patience=patience,
                  fixmatch_weight=fixmatch_weight, mu=mu, threshold=threshold, pseudo_threshold=pseudo_threshold,
                  pseudo_steps=pseudo_steps, bn_train=bn_train)
    state_path = out.with_name(out.name + ".state")
    state = previous_state(state_path, cfg, out)
    if state is not None and state.get("finished"):
        log.info("%s: this run already finished (delete %s to fine-tune again)", out, state_path)
        return FinetuneResult(**state["result"])

    loaded = load_backbone(parsed, device=str(torch_device), image_size=image_size)
    _check_init_backbone(fitted_init, loaded, store, store_pp)
    # A linear --init model was fitted on every labeled row of the store, the validation rows included: comparing the
    # initial network on them is biased in its favour. A zero-shot model never saw a label.
    contaminated = fitted_init is not None and fitted_init.method != "zeroshot"
    pseudo_rows, pseudo_y, pseudo_report = _pseudo_labels(state, fitted_pseudo, store, images, train_rows,
                                                          pseudo_threshold, pseudo_steps)
    train_y, pool_rows = _training_labels(images, train_rows, pseudo_rows, pseudo_y, pool_rows)

    net = _network(state, fitted_init, images, loaded, train_rows, torch_device, workers, seed, bn_train, unfreeze)
    log.info("%s: %d labeled train + %d pseudo-labeled + %d validation images, %d unlabeled pool", loaded.spec,
             len(train_rows), len(pseudo_rows), len(val_rows), len(pool_rows))
    trainer = Trainer(images, loaded, net, torch_device, cfg, np.concatenate([train_rows, pseudo_rows]), train_y,
                      val_rows, pool_rows, workers, progress)
    optimizer, scheduler = optimizer_and_schedule(net, cfg, trainer.steps_per_epoch)
    run = _progress(state, state_path, net, optimizer, scheduler, trainer, contaminated)
    resumed_from = run.epoch
    extra = {"pseudo_rows": pseudo_rows.tolist(), "pseudo_y": pseudo_y.tolist(), "pseudo_report": pseudo_report}

    out.parent.mkdir(parents=True, exist_ok=True)
    _train_epochs(run, trainer, optimizer, scheduler, cfg, len(val_rows) > 0, callback,
                  lambda: run.save(state_path, cfg, net, optimizer, scheduler, trainer.thresholds, extra))
    alpha, alpha_by = _choose_alpha(run, alphas, len(val_rows) > 0, contaminated, trainer, net)
    net.load_state_dict(wise_interpolate(run.initial, run.best, alpha))
    final_score = trainer.evaluate()

    result = _export(net, loaded, parsed, out, image_size, cfg, images, t_start, run, alpha, alpha_by, final_score,
                     resumed_from, pseudo_report)
    # the finished state is small: the checkpoint is the result; a rerun of the same command is a no-op
    atomic_save({"format": STATE_FORMAT, "finished": True, "config": cfg, "result": result.to_dict()}, state_path)
    log.info("wrote %s (best epoch %d, WiSE alpha %.2f) and %s in %.1f s", out, run.best_epoch, alpha,
             result.head_model, result.seconds)
    return result


def _step_size(device: torch.device, batch_size: int | None, mu: int | None) -> tuple[int, int]:
    """Labeled images per step and unlabeled images per labeled one: the user's, else the device's defaults."""
    step = STEP_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    return step["batch_size"] if batch_size is None else batch_size, step["mu"] if mu is None else mu


def _training_labels(images: ImageSet, train_rows, pseudo_rows, pseudo_y, pool_rows):
    """Per-image training labels (-1: none) of the labeled and pseudo-labeled rows, and the pool left unlabeled."""
    train_y = np.full(len(images), -1, dtype=np.int64)
    train_y[train_rows] = images.labels[train_rows]
    train_y[pseudo_rows] = pseudo_y
    return train_y, np.setdiff1d(pool_rows, pseudo_rows)


def _progress(state, state_path: Path, net, optimizer, scheduler, trainer: Trainer, contaminated: bool) -> Progress:
    """The run's progress: resumed from the state file of an interrupted run, else started from the initial network."""
    if state is None:
        return Progress.start(net, trainer.evaluate(), contaminated)
    run = Progress.resume(state, net, optimizer, scheduler, trainer.thresholds)
    log.info("resuming %s after epoch %d of %d", state_path, run.epoch, state["config"]["epochs"])
    return run


def _config(images: ImageSet, parsed, init, unfreeze, pseudo, alphas, image_size, **numbers) -> dict:
    """The run's configuration as recorded in its state file: a rerun resumes only when it is the same."""
    mode, n_unfreeze = parse_unfreeze(unfreeze)
    kinds = {"epochs": int, "lr": float, "batch_size": int, "seed": int, "weight_decay": float, "layer_decay": float,
             "warmup_epochs": float, "val_fraction": float, "patience": int, "fixmatch_weight": float, "mu": int,
             "threshold": float, "pseudo_threshold": float, "pseudo_steps": int, "bn_train": bool}
    cfg = {"data": str(Path(images.root).resolve()), "backbone": str(parsed),
           "init": None if init is None else str(Path(init).resolve()) if isinstance(init, (str, Path)) else "object",
           "unfreeze": f"{mode}-{n_unfreeze}" if mode == "last" else mode,
           "pseudo": None if pseudo is None else str(pseudo), "image_size": image_size, "wise_alphas": alphas}
    cfg.update({name: kinds[name](value) for name, value in numbers.items()})
    cfg["fingerprint"] = image_list_sha256(images.ids, images.splits, images.labels, images.classes)
    return cfg


def _export(net: FineTuneNet, loaded: Backbone, parsed, out: Path, image_size, cfg: dict, images: ImageSet,
            t_start: float, run: Progress, alpha: float, alpha_by: str, final_score, resumed_from: int,
            pseudo_report) -> FinetuneResult:
    """The backbone checkpoint, verified through the loader ``embed`` uses, and the head as a classify model; how far
    the weights moved from the initial network is said and recorded."""
    moved = say_how_far_weights_moved(run.initial, cpu_state(net), alpha_by, len(run.history))
    exported = cpu_state(net.trunk) if net.kind == "timm" else cpu_state(loaded.model)
    atomic_save(exported, out)
    new_spec = parse_spec(f"{parsed.kind}:{parsed.name}@{out}")
    check = load_backbone(new_spec, device="cpu", image_size=image_size)
    seconds = time.perf_counter() - t_start
    head_path = out.with_suffix(".head.skops")
    head = FineTunedHead(net.head.weight.detach().double().cpu().numpy(),
                         net.head.bias.detach().double().cpu().numpy()).fit(np.zeros((1, loaded.dim)))
    pipeline.FittedModel(estimator=head, method="finetune", params={k: v for k, v in cfg.items() if k != "fingerprint"},
                         backbones=[str(new_spec)], combine="concat", store_fingerprint=rows_sha256(images.ids),
                         classes=list(images.classes), fit_seconds=seconds,
                         backbone_weights={str(new_spec): check.weights_sha256}).save(head_path)
    return FinetuneResult(spec=str(new_spec), checkpoint=str(out), head_model=str(head_path), image_size=image_size,
                          epochs_run=len(run.history), best_epoch=run.best_epoch, alpha=float(alpha),
                          alpha_chosen_by=alpha_by,
                          val_accuracy_initial=None if run.score0 is None else run.score0["accuracy"],
                          val_accuracy=None if final_score is None else final_score["accuracy"],
                          resumed_from=resumed_from, seconds=seconds, history=run.history, pseudo=pseudo_report,
                          weights_change=moved)


def _check_flags(parsed, out: Path, unfreeze, epochs, batch_size, lr, val_fraction, patience, threshold,
                 pseudo_threshold, fixmatch_weight, mu, pseudo_steps, wise_alphas, pseudo, store) -> list[float]:
    """Refuse bad settings before anything heavy; returns the sorted WiSE alphas."""
    if parsed.path is not None and Path(parsed.path) == out:
        raise UserError(f"--out {out} is the checkpoint being fine-tuned; write the result to another file")
    if out.suffix in (".joblib", ".skops"):
        raise UserError(f"--out {out}: give a checkpoint file name such as ft.pth (the head goes beside it)")
    parse_unfreeze(unfreeze)
    if int(epochs) < 0 or int(batch_size) < 1 or float(lr) <= 0 or not 0 <= float(val_fraction) < 1 \
            or int(patience) < 1:
        raise UserError("need --epochs >= 0, --batch-size >= 1, --lr > 0, --patience >= 1 and 0 <= --val-fraction "
                         "< 1")
    # a confidence threshold above 1 is never reached: FixMatch (or the pseudo-labels) would silently do nothing
    for flag, value in (("--threshold", threshold), ("--pseudo-threshold", pseudo_threshold)):
        if not 0 <= float(value) <= 1:
            raise UserError(f"{flag} is a confidence in [0, 1], got {value!r}; 0.95 is FixMatch's usual value")
    if float(fixmatch_weight) < 0 or int(mu) < 0 or int(pseudo_steps) < 0:
        raise UserError("need --fixmatch-weight >= 0, --mu >= 0 and --pseudo-steps >= 0 (0 turns that part off)")
    alphas = sorted({float(a) for a in (as_list(wise_alphas) if not isinstance(wise_alphas, (list, tuple))
                                        else wise_alphas)})
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise UserError(f"wise_alphas must be values in [0, 1], got {wise_alphas!r}")
    if pseudo is not None and store is None:
        raise UserError("--pseudo needs --store S: the feature store of this data folder that the pseudo model was "
                         "fitted on")
    return alphas


def _init_store_preprocessing(fitted_init, images: ImageSet, store, image_size):
    """Check ``--init`` against the data (and its store); returns the store's preprocessing and the image size."""
    store_pp = None
    if fitted_init is not None:
        head_from_model(fitted_init, images)  # refuse a wrong --init before anything heavy
    if store is not None and fitted_init is not None:
        with FeatureStore(store) as fs:
            fitted_init.check_store(fs)
            store_pp = fs.provenance(fitted_init.backbones[0])["preprocessing"]
        if image_size is None:
            image_size = store_pp.get("image_size_override")
    elif fitted_init is not None:
        log.info("--init without --store: the image size is not checked against the init model's features "
                 "(pass --store or the same --image-size as when embedding)")
    return store_pp, image_size


def _split_rows(images: ImageSet, val_fraction, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation (stratified) and unlabeled-pool rows of the data folder."""
    labeled = np.flatnonzero((np.asarray(images.splits) == "train") & (images.labels >= 0))
    if not labeled.size:
        raise UserError(f"{images.root} has no labeled images; put them in train/<class>/")
    counts = np.bincount(images.labels[labeled], minlength=len(images.classes))
    if np.any(counts == 0):
        empty = [images.classes[c] for c in np.flatnonzero(counts == 0)]
        raise UserError(f"classes {empty} have no labeled images; add some to train/<class>/ (or remove the folder)")
    val_mask = split_validation(images.labels[labeled], float(val_fraction), seed)
    return labeled[~val_mask], labeled[val_mask], np.flatnonzero(np.asarray(images.splits) == "unlabeled")


def _check_init_backbone(fitted_init, loaded: Backbone, store, store_pp) -> None:
    """The ``--init`` model's features came from this backbone, with this preprocessing."""
    if fitted_init is None:
        return
    if store_pp is not None and store_pp.get("l2_normalized"):
        raise UserError(f"the init model was fitted on L2-normalised features (imported from normalised shards into "
                         f"{store}), which a head on the backbone's own features cannot start from; fit --init on a "
                         "store embedded with `python -m embed run` (either engine)")
    if store_pp is not None and not preprocessing_matches(loaded.preprocessing, store_pp):
        raise UserError(f"the init model's features in {store} were computed with other preprocessing "
                         f"({store_pp}) than {loaded.spec} now uses ({loaded.preprocessing}); pass the same "
                         "--image-size as when embedding")
    spec0 = fitted_init.backbones[0]
    want = fitted_init.backbone_weights.get(spec0)
    if want is not None and want != loaded.weights_sha256:
        raise UserError(f"--init model was fitted on features of {spec0} (weights {want[:12]}), not of "
                         f"{loaded.spec} (weights {loaded.weights_sha256[:12]}); fine-tune the backbone it was "
                         "fitted on")


def _pseudo_labels(state, fitted_pseudo, store, images: ImageSet, train_rows, threshold, steps):
    """Rows, labels and report of the pseudo-labels: saved in the state, selected from ``--pseudo``, or none."""
    if state is not None:
        rows, labels = np.asarray(state["pseudo_rows"], np.int64), np.asarray(state["pseudo_y"], np.int64)
        return rows, labels, state.get("pseudo_report")
    if fitted_pseudo is not None:
        counts = np.bincount(images.labels[train_rows], minlength=len(images.classes))
        return select_pseudo_labels(fitted_pseudo, store, images, counts, threshold, steps)
    return np.zeros(0, np.int64), np.zeros(0, np.int64), None


def _network(state, fitted_init, images: ImageSet, loaded: Backbone, train_rows, device: torch.device, workers: int,
             seed: int, bn_train: bool, unfreeze) -> FineTuneNet:
    """``backbone → L2-normalise → linear`` with its initial head (saved, from ``--init``, or LP-FT's probe)."""
    if state is not None:
        W0, b0 = state["initial"]["head.weight"].numpy(), state["initial"]["head.bias"].numpy()
    elif fitted_init is not None:
        W0, b0 = head_from_model(fitted_init, images)
    else:
        W0, b0 = probe_head(images, loaded, train_rows, device, workers, seed)
    net = FineTuneNet(loaded, W0, b0, bn_train=bn_train)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    trainable_layers = apply_unfreeze(net, unfreeze)
    log.info("%d of %d trunk layer groups train (%d parameters)", trainable_layers, net.n_layers,
             sum(p.numel() for p in net.parameters() if p.requires_grad))
    return net


def _train_epochs(run: Progress, trainer: Trainer, optimizer, scheduler, cfg: dict, validated: bool,
                  callback, save_state: Callable[[], None]) -> None:
    """Epochs from ``run.epoch`` with early stopping; the state is saved after each (then ``callback``)."""
    epochs, patience = cfg["epochs"], cfg["patience"]
    stale = run.epoch - run.best_epoch  # epochs since the best one
    for epoch in range(run.epoch, epochs):
        if validated and run.best_score is not None and stale >= patience:
            log.info("early stop: no validation improvement for %d epochs (best: epoch %d)", stale, run.best_epoch)
            break
        t0 = time.perf_counter()
        stats, run.num_updates = trainer.train_epoch(epoch, optimizer, scheduler, run.num_updates)
        score = trainer.evaluate()
        stats.update(epoch=epoch + 1, seconds=time.perf_counter() - t0,
                     val_accuracy=None if score is None else score["accuracy"],
                     val_loss=None if score is None else score["loss"],
                     thresholds_mean=float(np.mean(trainer.thresholds.thresholds)))
        run.history.append(stats)
        if score is None:
            run.best_epoch = epoch + 1  # no validation: the last epoch is kept (best stays None: it is the network)
        elif run.best_score is None or score_key(score) > score_key(run.best_score):
            run.best, run.best_epoch, run.best_score, stale = cpu_state(trainer.net), epoch + 1, score, 0
        else:
            stale += 1
        log.info("epoch %d/%d: loss %.4f (labeled %.4f, unlabeled %.4f, mask %.2f), lr %.2e%s, %.1f s", epoch + 1,
                 epochs, stats["loss"], stats["loss_labeled"], stats["loss_unlabeled"], stats["mask_rate"],
                 stats["lr"], "" if score is None else f", val acc {score['accuracy']:.4f} loss {score['loss']:.4f}",
                 stats["seconds"])
        run.epoch = epoch + 1
        save_state()
        if callback is not None:
            callback(epoch, stats)
    if run.best is None:
        run.best = cpu_state(trainer.net)


def _choose_alpha(run: Progress, alphas: list[float], validated: bool, contaminated: bool, trainer: Trainer,
                  net: FineTuneNet) -> tuple[float, str]:
    """WiSE-FT's alpha, by validation where the validation rows are clean; and how it was chosen."""
    if run.best_epoch == 0:
        return 0.0, "no fine-tuned epoch"  # none beat the initial network (or no epoch ran)
    if len(alphas) == 1:
        return alphas[0], "fixed"
    if not validated:
        log.info("no validation rows: WiSE alpha = 1 (the fine-tuned weights)")
        return 1.0, "no validation"
    if contaminated:
        alpha = min(alphas, key=lambda a: (abs(a - 0.5), -a))
        log.info("WiSE alpha = %.2f (WiSE-FT's default without a clean validation split; pass one value in "
                 "wise_alphas to choose another)", alpha)
        return alpha, "init saw the validation rows"
    scored = []
    for a in alphas:
        net.load_state_dict(wise_interpolate(run.initial, run.best, a))
        scored.append((score_key(trainer.evaluate()), a))
        log.info("WiSE alpha %.2f: validation accuracy %.4f, loss %.4f", a, scored[-1][0][0], -scored[-1][0][1])
    return max(scored)[1], "validation"  # best accuracy, then lowest loss, then the larger alpha
