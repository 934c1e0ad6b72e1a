"""A synthetic feature store: three Gaussian classes seen by two 'backbones', one with CLIP-like text embeddings."""
import numpy as np

from store import ERROR, OK, FeatureStore

CLASSES = ["cat", "dog", "fox"]
A, B = "timm:a", "clip:b/tag"


def make_store(path, labeled_test=True, seed=0, root=None, failed_class=None, classes=CLASSES, suffix=""):
    """Three Gaussian classes in two 'backbones'; B also has CLIP-like text embeddings pointing at the means.

    ``root`` is the data folder the ids are relative to; every train image of class ``failed_class`` (a name) is
    recorded as failed to decode; ``classes`` renames the three classes (the ids keep the default names); ``suffix``
    ends every file name (another image list)."""
    rng = np.random.default_rng(seed)
    n_train, n_unlabeled, n_test = 5, 40, 20
    ids, splits, labels, truth = [], [], [], []
    for split, per_class in (("train", n_train), ("unlabeled", n_unlabeled), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            for k in range(per_class):
                ids.append(f"{split}/{name}/{k}{suffix}.png" if split != "unlabeled"
                           else f"unlabeled/{name}{k}{suffix}.png")
                splits.append(split)
                labels.append(c if split == "train" or (split == "test" and labeled_test) else -1)
                truth.append(c)
    truth = np.array(truth)
    means_a, means_b = rng.normal(size=(3, 8)) * 3, rng.normal(size=(3, 6)) * 3
    feats_a = means_a[truth] + rng.normal(size=(len(ids), 8))
    feats_b = means_b[truth] + rng.normal(size=(len(ids), 6))
    failed = np.zeros(len(ids), dtype=bool)
    if failed_class is not None:
        failed = (np.array(splits) == "train") & (truth == list(classes).index(failed_class))
    status = np.where(failed, ERROR, OK)
    errors = ["cannot identify image file" if bad else None for bad in failed]
    with FeatureStore.create(path, ids, splits, labels, list(classes), root=root) as fs:
        for spec, feats in ((A, feats_a), (B, feats_b)):
            fs.begin_backbone({"spec": spec, "weights_sha256": spec, "weights_source": "test", "preprocessing": {},
                               "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, feats.shape[1])
            fs.write_rows(spec, np.arange(len(ids)), status, [None] * len(ids), errors, features=feats[~failed])
        fs.set_text(B, np.repeat(means_b[:, None, :], 2, axis=1), ["a {}.", "the {}."], 100.0)
    return path, truth
