"""Image sources: folder layouts (:mod:`.folders`), a CSV list (:mod:`.csvlist`), the built-in demo (:mod:`.demo`).

Every source becomes an :class:`ImageSet`: ids (paths relative to the data root, POSIX style), splits, labels
(-1 unknown) and class names, in a deterministic order (sorted by split, then id).
"""
from embed.sources.csvlist import LABEL_COLUMNS, PATH_COLUMNS, SPLIT_COLUMNS, from_csv
from embed.sources.demo import DEMO_CLASSES, write_demo
from embed.sources.files import VALIDATION_FOLDERS, ImageSet
from embed.sources.folders import METADATA, from_folder, from_imagefolder, is_validation_id

__all__ = ["DEMO_CLASSES", "LABEL_COLUMNS", "METADATA", "PATH_COLUMNS", "SPLIT_COLUMNS", "VALIDATION_FOLDERS",
           "ImageSet", "from_csv", "from_folder", "from_imagefolder", "is_validation_id", "write_demo"]
