"""The optimisation of a fine-tuning run: AdamW with layer-wise lr decay (timm) and a per-step cosine schedule whose
linear warm-up is sized to the run; and how far a run moved the weights."""
from __future__ import annotations

import logging

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

log = logging.getLogger(__name__)


def optimizer_and_schedule(net: nn.Module, cfg: dict, steps_per_epoch: int):
    """AdamW with layer-wise lr decay (timm) and a per-step cosine schedule with linear warm-up."""
    lr = cfg["lr"]
    optimizer = create_optimizer_v2(net, opt="adamw", lr=lr, weight_decay=cfg["weight_decay"],
                                    layer_decay=cfg["layer_decay"] if cfg["layer_decay"] != 1 else None)
    total = max(1, cfg["epochs"] * steps_per_epoch)
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=lr * 0.01,
                                  warmup_t=warmup_steps(cfg["warmup_epochs"], steps_per_epoch, total),
                                  warmup_lr_init=lr * 0.01, t_in_epochs=False)
    return optimizer, scheduler


#: the largest share of a run's steps the linear warm-up may take: a short run must still train at its peak lr
MAX_WARMUP_SHARE = 0.1


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Steps of linear warm-up: ``warmup_epochs`` of them, but at most :data:`MAX_WARMUP_SHARE` of the run (a
    one-epoch run with one epoch of warm-up would otherwise train at 1 % of its learning rate throughout)."""
    asked = int(round(warmup_epochs * steps_per_epoch))
    steps = min(asked, int(MAX_WARMUP_SHARE * total_steps))
    if steps < asked:
        log.info("warm-up shortened from %d to %d steps (at most %d %% of the run's %d steps)", asked, steps,
                 round(100 * MAX_WARMUP_SHARE), total_steps)
    return steps


#: a relative change of the weights below this leaves the network, for every practical purpose, where it started
BARELY_MOVED = 1e-3


def weights_change(initial: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> float:
    """Relative L2 change ``||final - initial|| / ||initial||`` over the floating tensors of two state_dicts."""
    diff = norm = 0.0
    for name, before in initial.items():
        if before.is_floating_point():
            diff += float((final[name].float() - before.float()).pow(2).sum())
            norm += float(before.float().pow(2).sum())
    return (diff ** 0.5) / max(norm ** 0.5, 1e-12)


def say_how_far_weights_moved(initial: dict, final: dict, alpha_by: str, epochs_run: int) -> float:
    """Log how far the exported weights moved from the initial network; warn when epochs ran but changed almost
    nothing (``--epochs 0`` asks for the initial network)."""
    moved = weights_change(initial, final)
    log.info("the exported weights moved %.2e (relative L2) from the initial network", moved)
    if moved < BARELY_MOVED and epochs_run:
        why = ("no fine-tuned epoch beat the initial network on validation" if alpha_by == "no fine-tuned epoch"
               else "the training steps barely changed them")
        log.warning("fine-tuning left the weights almost where they started (relative change %.1e: %s); the "
                    "checkpoint is practically the initial network: train longer (--epochs) or faster (--lr)",
                    moved, why)
    return moved
