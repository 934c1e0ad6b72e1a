"""End-to-end fine-tuning (``python -m classify finetune``): the path back when cached features are not enough.

What one run does
-----------------
1. Reads the labeled images of a split-folder layout (``train/<class>/*``) and holds out a stratified
   validation split (``val_fraction``). With ``pseudo=`` it adds the confident predictions of a fitted classify model
   (``selftrain``, ``labelprop``, ...) on the store's unlabeled rows, selected by
   :class:`classify.methods.thresholds.ClassAwareThresholds` exactly as ``selftrain``'s "classaware" selection does.
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

Modules: :mod:`~classify.finetune.recipe` (``finetune()``, the recipe above), :mod:`~classify.finetune.network`
(the network, layer groups, unfreezing, WiSE), :mod:`~classify.finetune.heads` (initial head, validation split,
pseudo-labels), :mod:`~classify.finetune.data` (seeded image views), :mod:`~classify.finetune.trainer` (one epoch,
evaluation), :mod:`~classify.finetune.state` (atomic checkpoints, resume, the result).
"""
from classify.finetune.heads import (
           head_from_model,
           select_pseudo_labels,
           split_validation,
)
from classify.finetune.network import (
           FineTuneNet,
           apply_unfreeze,
           parse_unfreeze,
           wise_interpolate,
)
from classify.finetune.recipe import DEFAULT_WISE_ALPHAS, finetune
from classify.finetune.state import FinetuneResult
from classify.methods.linear import FineTunedHead

__all__ = ["DEFAULT_WISE_ALPHAS", "FineTuneNet", "FineTunedHead", "FinetuneResult", "apply_unfreeze", "finetune",
           "head_from_model", "parse_unfreeze", "select_pseudo_labels", "split_validation", "wise_interpolate"]
