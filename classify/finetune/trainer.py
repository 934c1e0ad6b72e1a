"""One fine-tuning run's epochs: weak/strong views, FixMatch with class-aware thresholds, validation."""
from __future__ import annotations

import logging
import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from classify.finetune.data import ImageViews, collate_views, item_seed
from classify.finetune.network import FineTuneNet
from classify.methods.thresholds import ClassAwareThresholds
from embed.backbones import Backbone
from embed.sources import ImageSet

log = logging.getLogger(__name__)


def score_key(score: dict) -> tuple[float, float]:
    """Higher is better: accuracy, then lower loss."""
    return score["accuracy"], -score["loss"]


class Trainer:
    """One fine-tuning run; see :func:`finetune` (this class only keeps the pieces together)."""

    def __init__(self, images: ImageSet, backbone: Backbone, net: FineTuneNet, device: torch.device, cfg: dict,
                 train_rows: np.ndarray, train_y: np.ndarray, val_rows: np.ndarray, pool_rows: np.ndarray,
                 workers: int, progress: bool) -> None:
        self.images, self.backbone, self.net, self.device, self.cfg = images, backbone, net, device, cfg
        self.paths = images.paths
        self.train_rows, self.train_y, self.val_rows, self.pool_rows = train_rows, train_y, val_rows, pool_rows
        self.workers, self.progress = workers, progress
        self.cuda = device.type == "cuda"
        self.target_size = backbone.resize_size
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
        return DataLoader(ImageViews(self.paths, items, transforms, self.target_size), **batching,
                          num_workers=self.workers, collate_fn=collate_views, pin_memory=self.cuda,
                          prefetch_factor=4 if self.workers else None)

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

    def _epoch_loaders(self, epoch: int):
        """This epoch's loaders: the shuffled training rows (weak views) in near-equal batches, and the unlabeled
        draws (weak and strong views of each), or ``None`` per step when the pool is not used."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg["seed"], epoch, 1])
        order = rng.permutation(self.train_rows)
        lab_items = [(int(r), item_seed(cfg["seed"], epoch, 2, k)) for k, r in enumerate(order)]
        chunks = [c.tolist() for c in np.array_split(np.arange(len(order)), self.steps_per_epoch)]
        # near-equal batches (never a lone image, which BatchNorm cannot train on)
        lab_loader = self._loader(lab_items, [self.backbone.augment_transforms["weak"]], batch_sampler=chunks)
        if not self.use_unlabeled:
            return lab_loader, [None] * self.steps_per_epoch
        need = self.steps_per_epoch * self.unlabeled_batch
        picks = np.concatenate([rng.permutation(self.pool_rows)
                                for _ in range(math.ceil(need / len(self.pool_rows)))])[:need]
        unl_items = [(int(r), item_seed(cfg["seed"], epoch, 3, k)) for k, r in enumerate(picks)]
        unl_loader = self._loader(unl_items, [self.backbone.augment_transforms["weak"],
                                              self.backbone.augment_transforms["strong"]],
                                  batch_size=self.unlabeled_batch)
        return lab_loader, unl_loader

    def train_epoch(self, epoch: int, optimizer, scheduler, num_updates: int) -> tuple[dict, int]:
        """One pass over the (shuffled) training rows; returns the epoch's stats and the updated step count."""
        cfg = self.cfg
        torch.manual_seed(item_seed(cfg["seed"], epoch, 0))  # dropout / drop-path of this epoch
        lab_loader, unl_loader = self._epoch_loaders(epoch)
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
