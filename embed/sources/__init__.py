"""Image sources: folder layouts (:mod:`.folders`), a CSV list (:mod:`.csvlist`), the built-in demo (:mod:`.demo`).

Every source becomes an :class:`ImageSet`: ids (paths relative to the data root, POSIX style), splits, labels
(-1 unknown) and class names, in a deterministic order (sorted by split, then id).
"""
from embed.sources.csvlist import LABEL_COLUMNS, PATH_COLUMNS, SPLIT_COLUMNS, from_csv
from embed.sources.demo import DEMO_CLASSES, write_demo
from embed.sources.files import ImageSet
from embed.sources.folders import METADATA, from_folder, from_imagefolder

__all__ = ["DEMO_CLASSES", "LABEL_COLUMNS", "METADATA", "PATH_COLUMNS", "SPLIT_COLUMNS", "ImageSet", "from_csv",
           "from_folder", "from_imagefolder", "write_demo"]
