"""A small store for the labeling commands (suggest, audit): three separated classes, a pool with one failed image
and one copy of a labeled image, labeled test rows."""
import json

import h5py
import numpy as np

from store import ERROR, OK, FeatureStore, image_list_sha256

SPEC = "timm:a"


def make_store(path, unlabeled=True):
    """Three separated classes, 3 labeled images each; pool row 0 failed to decode, pool row 1 has the same bytes
    (sha256) as a labeled image; test rows have labels (they must never be suggested)."""
    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "fox"]
    ids, splits, labels, truth = [], [], [], []
    for split, per_class in (("train", 3), ("unlabeled", 10 if unlabeled else 0), ("test", 4)):
        for c, name in enumerate(classes):
            for k in range(per_class):
                ids.append(f"{split}/{name}/{k}.png")
                splits.append(split)
                labels.append(-1 if split == "unlabeled" else c)
                truth.append(c)
    truth = np.array(truth)
    feats = np.eye(3, 6)[truth] * 10 + rng.normal(size=(len(ids), 6))
    sha = [f"{i:064x}" for i in range(len(ids))]
    status = np.full(len(ids), OK)
    if unlabeled:
        pool = [i for i, s in enumerate(splits) if s == "unlabeled"]
        status[pool[0]] = ERROR
        sha[pool[1]] = sha[0]  # a copy of train/cat/0.png
    with FeatureStore.create(path, ids, splits, labels, classes, root="/data") as fs:
        fs.begin_backbone({"spec": SPEC, "weights_sha256": "w", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, 6)
        errors = [("broken" if s == ERROR else None) for s in status]
        fs.write_rows(SPEC, np.arange(len(ids)), status, sha, errors, features=feats[status == OK])
    return path, ids, splits, status


def make_version_1(path):
    """Rewrite a store as the first release wrote it: no /labels, the image-list fingerprint, format_version 1."""
    with h5py.File(path, "a") as f:
        ids = [i.decode() for i in f["images/id"][:]]
        classes = json.loads(f.attrs["classes"])
        labels, splits = f["images/label"][:], f["images/split"][:]
        names = [("train", "unlabeled", "test")[s] for s in splits]
        for name, values in (("label", labels), ("split", splits)):
            del f[f"images/{name}"]
            f["images"].create_dataset(name, data=values)
        del f["labels"], f["partial"]
        del f.attrs["rows_sha256"]
        f.attrs["image_list_sha256"] = image_list_sha256(ids, names, labels, classes)
        f.attrs["format_version"] = 1
    return path


def make_image_store(folder, per_class=5, pool=8, classes=("cat", "dog", "fox"), separation=6.0, dim=6, flips=(),
                     seed=0, rename=None):
    """A store over real PNG files under ``folder/data`` (its recorded data folder): ``per_class`` labeled train
    images and ``pool`` unlabeled images per class, features that separate the classes by ``separation`` (0: noise
    the labels do not follow). ``flips``: (class, k) of train images filed under the next class's folder, with its
    label, as a person who clicked the wrong class would (their features stay those of the true class). ``rename``:
    {id: id the store lists instead}, as a crafted store would (the files stay where they were written).

    Returns
    -------
    (store path, data folder, ids, flipped ids)
    """
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    data = folder / "data"
    rng = np.random.default_rng(seed)
    ids, splits, labels, truth, flipped = [], [], [], [], []
    for c, name in enumerate(classes):
        for k in range(per_class + pool):
            if k < per_class:
                given = (c + 1) % len(classes) if (c, k) in flips else c
                image_id = f"train/{classes[given]}/{name}{k}.png"
                splits.append("train")
                labels.append(given)
                if given != c:
                    flipped.append(image_id)
            else:
                image_id = f"unlabeled/{name}{k}.png"
                splits.append("unlabeled")
                labels.append(-1)
            (data / image_id).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24, 24), ((90 * c) % 256, (23 * k) % 256, 140)).save(data / image_id)
            ids.append(image_id)
            truth.append(c)
    feats = np.eye(len(classes), dim)[np.array(truth)] * separation + rng.normal(size=(len(ids), dim))
    path = folder / "s.h5"
    ids = [(rename or {}).get(i, i) for i in ids]
    with FeatureStore.create(path, ids, splits, labels, list(classes), root=str(data)) as fs:
        fs.begin_backbone({"spec": SPEC, "weights_sha256": "w", "weights_source": "test", "preprocessing": {},
                           "versions": {}, "dtype": "float32", "views": 0, "view_kinds": []}, dim)
        fs.write_rows(SPEC, np.arange(len(ids)), np.full(len(ids), OK), [f"{i:064x}" for i in range(len(ids))],
                      [None] * len(ids), features=feats)
    return path, data, ids, flipped
