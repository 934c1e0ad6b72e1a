"""``python -m benchmarks embed|run``: speed and accuracy measurements (never part of the tests)."""
from __future__ import annotations

import json
import logging

from store.cli import run_cli


def embed(backbone: str = "timm:tf_efficientnet_lite0", n: int = 2000, batch_size: int = 64, image_size: int = 112,
          file_size: int = 256, workers: int | None = None) -> None:
    """Raw model-forward throughput on preloaded tensors vs. `embed run` end to end on ~n real image files.

    Parameters
    ----------
    backbone : str
        Backbone spec.
    n : int
        Number of image files (Fashion-MNIST test images written as JPEG; digits without the package).
    batch_size, image_size, workers : int
        As for `python -m embed run`.
    file_size : int
        Side of the JPEG files written (decoding cost grows with it).
    """
    from benchmarks.embed_speed import measure

    result = measure(backbone, n, batch_size, image_size, file_size, workers)
    print(f"{result['backbone']} @ {result['image_size']} px, batch {result['batch_size']}, "
          f"{result['images']} JPEG files of {result['file_size']} px, {result['torch_threads']} torch threads")
    print(f"raw forward:  {result['raw_forward_img_per_s']:.1f} img/s")
    print(f"end to end:   {result['end_to_end_img_per_s']:.1f} img/s")
    print(f"ratio:        {result['ratio']:.2f}")
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    run_cli({"embed": embed}, argv)
