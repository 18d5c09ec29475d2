"""Data: readers of the standard FER layouts into one in-memory form (`FERDataset`), built-in
synthetic faces, splits by subject, content fingerprints, the decode-once cache,
albumentations pipelines and the torch glue.

Light at import (numpy, cv2); torch, timm and albumentations load in their own modules.
"""
from .dataset import BASIC_CLASSES, CANONICAL_CLASSES, FERDataset, canonical_label
from .load import load_dataset
from .readers import READERS, Reader, describe, get_reader, register
from .splits import assert_subject_independent, make_splits, split_fingerprint

__all__ = [
    "BASIC_CLASSES", "CANONICAL_CLASSES", "FERDataset", "canonical_label", "load_dataset",
    "READERS", "Reader", "describe", "get_reader", "register", "make_splits",
    "assert_subject_independent", "split_fingerprint",
]
