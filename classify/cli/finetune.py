"""``python -m classify finetune``: the command line of end-to-end fine-tuning (the recipe is
:mod:`classify.finetune`)."""
from __future__ import annotations

import inspect
import json

from store.clitools import flag_name, progress_bars
from store.validation import BOOL, NONE, Int, Real, UserError, check_flags, did_you_mean

#: the type and range of finetune's flags (a confidence threshold above 1 would turn FixMatch off silently)
FLAGS = {"progress": [BOOL], "json_output": [BOOL], "offline": [BOOL], "bn_train": [BOOL], "seed": [Int(0)],
         "epochs": [Int(0)], "lr": [Real(0, low_open=True)], "batch_size": [NONE, Int(1)], "image_size": [NONE, Int(8)],
         "weight_decay": [Real(0)], "layer_decay": [Real(0, 1, low_open=True)], "warmup_epochs": [Real(0)],
         "val_fraction": [Real(0, 1, high_open=True)], "patience": [Int(1)], "fixmatch_weight": [Real(0)],
         "mu": [NONE, Int(0)], "threshold": [Real(0, 1)], "pseudo_threshold": [Real(0, 1)], "pseudo_steps": [Int(0)],
         "workers": [NONE, Int(0)]}


def finetune(data: str | None = None, backbone: str | None = None, out: str | None = None, init: str | None = None,
             unfreeze: str = "all", pseudo: str | None = None, store: str | None = None, epochs: int = 20,
             lr: float = 1e-4, batch_size: int | None = None, device: str = "auto", image_size: int | None = None,
             seed: int = 0, progress: bool = True, json_output: bool = False, offline: bool = False,
             **options) -> None:
    """Fine-tune a timm model or a CLIP image tower end to end; the result is a new backbone spec for `embed run`.

    Rerun the same command to resume after a crash (state in OUT.state). See classify/finetune/recipe.py for the recipe.

    Parameters
    ----------
    data : str
        Data folder: train/<class>/* labeled, unlabeled/* (FixMatch pool).
    backbone : str
        timm:<name>[@ckpt], clip:<arch>/<tag> or clip:<arch>@<ckpt>.
    out : str
        The fine-tuned checkpoint to write (e.g. ft.pth); the head goes to OUT-stem.head.skops.
    init : str
        A saved linear or zeroshot model of this backbone to start the head from (default: a probe fitted here).
    unfreeze : str
        all, none or last-N (the last N layer groups of the backbone; the head always trains).
    pseudo : str
        A saved model (e.g. selftrain, labelprop) whose confident predictions on the store's unlabeled rows become
        extra labels; needs --store.
    store : str
        The feature store of this data folder (for --pseudo; with --init it checks / supplies the image size).
    epochs : int
        Passes over the labeled training images.
    lr : float
        Peak learning rate of AdamW (of the head; trunk layers get it scaled by --layer-decay per layer group).
    batch_size : int
        Labeled images per step (default: 32 on CUDA, 16 on a CPU, where a step's activations live in RAM).
    device : str
        auto, cpu or cuda (CUDA: bfloat16 autocast, channels-last).
    image_size : int
        Square input side (default: the backbone's, or what the --init model's store used).
    seed : int
        Seeds the validation split, sampling, augmentations and dropout.
    progress : bool
        Show a progress bar per epoch.
    json_output : bool
        Print the result as one JSON object on the last line (--json).
    offline : bool
        Never download the backbone's weights (as ``HF_HUB_OFFLINE=1``): use the @checkpoint, the cache or a weight
        package, else stop with one line naming what is missing.
    **options : further options
        The further options above, as flags (--val-fraction 0.2 --patience 5).

    Other Parameters
    ----------------
    weight_decay : float
        AdamW weight decay.
    layer_decay : float
        Learning-rate scale per layer group below the head (lr * layer_decay ** depth).
    warmup_epochs : float
        Linear learning-rate warm-up, in epochs; at most a tenth of the run, so a short run still trains at --lr.
    val_fraction : float
        Share of each class's labeled images held out for early stopping and the WiSE alpha (0: none, the last
        epoch is kept).
    patience : int
        Epochs without validation improvement before stopping.
    fixmatch_weight : float
        Weight of the FixMatch loss on unlabeled/ images.
    mu : int
        Unlabeled images per labeled image in a step (0: no FixMatch; default: 2 on CUDA, 1 on a CPU).
    threshold : float
        Initial class-aware confidence threshold of FixMatch's pseudo-labels.
    pseudo_threshold : float
        Class-aware selection of --pseudo labels: the start threshold (selftrain's tau0).
    pseudo_steps : int
        Class-aware selection of --pseudo labels: threshold updates (selftrain's classaware_steps).
    wise_alphas : list of float
        Candidate WiSE-FT weights of the fine-tuned weights (0 = the original backbone), e.g. 0,0.5,1; the best on
        validation is kept.
    bn_train : bool
        Update BatchNorm running statistics while training.
    workers : int
        Image-decoding worker processes (default: the cores, at most 8).

    Examples
    --------
    python -m classify finetune --data DATA --backbone timm:tf_efficientnet_lite0 --epochs 20 --out ft.pth
    python -m classify finetune --data DATA --backbone timm:resnet50 --init probe.skops --unfreeze last-2 --out ft.pth
    python -m classify finetune --data DATA --backbone clip:ViT-B-32/openai --pseudo st.skops --store S.h5 --out ft.pth
    """
    from classify import finetune as ft

    for flag, value, hint in (("data", data, "DIR, the data folder (train/<class>/*, unlabeled/*)"),
                              ("backbone", backbone, "SPEC, e.g. timm:tf_efficientnet_lite0"),
                              ("out", out, "CKPT, the fine-tuned checkpoint to write (e.g. ft.pth)")):
        if value is None:
            raise UserError(f"pass --{flag} {hint}")
    accepted = set(inspect.signature(ft.finetune).parameters) - {"callback"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        hint = did_you_mean(unknown[0], sorted(accepted), show=flag_name, n=1)
        raise UserError(f"unknown option --{unknown[0].replace('_', '-')}: {hint}see `python -m classify finetune "
                         "--help`")
    ft.parse_unfreeze(unfreeze)
    check_flags(dict(options, epochs=epochs, lr=lr, batch_size=batch_size, image_size=image_size, seed=seed,
                     progress=progress, json_output=json_output, offline=offline), FLAGS)
    from embed.backbones import offline_env

    progress = progress_bars(progress)  # off under --quiet
    with offline_env(offline):  # the backbone's load refuses to download (finetune checks its inputs first)
        result = ft.finetune(data, backbone, out, init=init, unfreeze=unfreeze, pseudo=pseudo, store=store,
                             epochs=epochs, lr=lr, batch_size=batch_size, device=device, image_size=image_size,
                             seed=seed, progress=progress, **options)
    size = f" --image-size {result.image_size}" if result.image_size else ""
    val = "" if result.val_accuracy is None else (f", validation accuracy {result.val_accuracy_initial:.4f} -> "
                                                  f"{result.val_accuracy:.4f}")
    print(f"fine-tuned {result.epochs_run} epochs (best {result.best_epoch}, WiSE alpha {result.alpha:.2f}{val}) "
          f"in {result.seconds:.1f} s")
    print(f"backbone: {result.spec}")
    print(f"next:  python -m embed run --data {data} --backbone {result.spec} --store STORE{size}")
    print(f"       python -m classify predict --model {result.head_model} --store STORE   (the fine-tuned head)")
    if json_output:
        from classify.pipeline import jsonable

        print(json.dumps(result.to_dict(), default=jsonable))


#: the recipe's further options (keyword-only parameters of :func:`classify.finetune.finetune` beyond the ones above)
#: and their defaults, written out so that ``--help`` needs no torch (a test keeps them equal to the recipe's)
FURTHER_OPTIONS = {"weight_decay": 0.05, "layer_decay": 0.8, "warmup_epochs": 1.0, "val_fraction": 0.2, "patience": 5,
                   "fixmatch_weight": 1.0, "mu": None, "threshold": 0.95, "pseudo_threshold": 0.5,
                   "pseudo_steps": 1000, "wise_alphas": (0.0, 0.25, 0.5, 0.75, 1.0), "bn_train": False,
                   "workers": None}


def finetune_options() -> dict[str, tuple]:
    """The further options of ``classify finetune`` with the recipe's defaults, for its help."""
    return {name: (default, "") for name, default in FURTHER_OPTIONS.items()}
