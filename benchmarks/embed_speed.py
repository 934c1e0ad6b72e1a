"""Embedding throughput: raw model forward on preloaded tensors vs. the end-to-end ``embed`` run on image files.

Both are measured in one process, on the same backbone, batch size and images, so the ratio is the share of the
model's speed that survives decoding, transforms and store writes.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.datasets import fashion_mnist_arrays
from embed import sources
from embed.backbones import load_backbone
from embed.images import load_image
from embed.engines.local import embed

log = logging.getLogger(__name__)


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` real Fashion-MNIST (or, without it, scikit-learn digits) images as ``size``-px JPEG files."""
    from PIL import Image

    arrays = fashion_mnist_arrays("test")
    if arrays is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = (digits.images * 16).clip(0, 255).astype(np.uint8), digits.target
    else:
        images, labels = arrays
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(n, len(images)), replace=False)
    for k, i in enumerate(pick):
        split = "train" if k < 10 * len(np.unique(labels)) else "unlabeled"
        out = folder / split / (f"c{labels[i]}" if split == "train" else "") / f"{k:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).convert("RGB").resize((size, size), Image.Resampling.BILINEAR).save(out, quality=90)
    return folder


def measure(backbone: str = "timm:tf_efficientnet_lite0", n: int = 2000, batch_size: int = 64,
            image_size: int | None = 112, file_size: int = 256, workers: int | None = None) -> dict:
    """Images per second of the raw forward and of ``embed`` end to end, and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_images(Path(tmp) / "data", n, file_size)
        images = sources.from_folder(root)
        model = load_backbone(backbone, image_size=image_size)
        # Preloaded tensors: decode + transform happen before the clock starts.
        batch = torch.stack([model.eval_transform(load_image(p).image) for p in images.paths[:batch_size]])
        n_batches = -(-len(images) // batch_size)
        with torch.inference_mode():
            model.encode_images(batch)  # warm-up
            start = time.perf_counter()
            for _ in range(n_batches):
                model.encode_images(batch)
            raw = n_batches * batch_size / (time.perf_counter() - start)
        start = time.perf_counter()
        load_backbone(backbone, image_size=image_size)
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
        embed(images, Path(tmp) / "s.h5", [backbone], batch_size=batch_size, workers=workers, image_size=image_size,
              progress=False)
        end_to_end = len(images) / (time.perf_counter() - start - load_seconds)
    return {"backbone": backbone, "images": len(images), "batch_size": batch_size, "image_size": image_size,
            "file_size": file_size, "workers": workers, "raw_forward_img_per_s": raw,
            "end_to_end_img_per_s": end_to_end, "ratio": end_to_end / raw, "torch_threads": torch.get_num_threads()}


def measure_ray(backbone: str = "timm:tf_efficientnet_lite0", n: int = 1000, batch_size: int = 64,
                image_size: int | None = 112, file_size: int = 256, num_cpus: int = 2, shard_size: int = 500) -> dict:
    """Local runner vs Ray Data engine on the same files, backbone and batch size; images per second of each.

    The Ray cluster is started before the clock, and model loading is excluded on both sides (each side's first
    pass over a small warm-up set pays it), so the ratio is the engine overhead itself.
    """
    import ray

    from embed.engines.ray import embed_shards

    with tempfile.TemporaryDirectory() as tmp:
        root = write_images(Path(tmp) / "data", n, file_size)
        images = sources.from_folder(root)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            start = time.perf_counter()
            load_backbone(backbone, image_size=image_size)
            load_seconds = time.perf_counter() - start
            start = time.perf_counter()
            embed(images, Path(tmp) / "s.h5", [backbone], batch_size=batch_size, image_size=image_size,
                  progress=False)
            local = len(images) / (time.perf_counter() - start - load_seconds)
            start = time.perf_counter()
            embed_shards(images, backbone, Path(tmp) / "shards", batch_size=batch_size, shard_size=shard_size,
                         image_size=image_size, progress=False)
            # The driver and each actor load the model once: count the driver's load out, as for the local run.
            ray_rate = len(images) / (time.perf_counter() - start - load_seconds)
        finally:
            ray.shutdown()
    return {"backbone": backbone, "images": len(images), "batch_size": batch_size, "num_cpus": num_cpus,
            "local_img_per_s": local, "ray_img_per_s": ray_rate, "ray_overhead": 1 - ray_rate / local}
