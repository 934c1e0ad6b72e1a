"""Seeded image views for fine-tuning: every random draw of an item comes from its own seed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from embed.images import load_image
from embed.engines.local import seeded


# -------------------------------------------------------------------------------------------------------------- data
class ImageViews(Dataset):
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


def collate_views(items):
    good = [it for it in items if it[1] is not None]
    rows = torch.as_tensor([it[0] for it in good], dtype=torch.long)
    return rows, (torch.stack([it[1] for it in good]) if good else None)  # (B,), (B, V, 3, H, W)


def item_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] % 2**31)
