"""HDF5 feature store: per-image metadata, per-backbone features with provenance. Depends on h5py/numpy only."""
from store.atomic import atomic_write
from store.h5store import (ERROR, OK, PENDING, SPLITS, FeatureStore, Rows, display_id, image_list_sha256,
                           open_for_images)
from store.writers import Batch, StoreWriter, write_batches

__all__ = ["ERROR", "OK", "PENDING", "SPLITS", "Batch", "FeatureStore", "Rows", "StoreWriter", "atomic_write",
           "display_id", "image_list_sha256", "open_for_images", "write_batches"]
