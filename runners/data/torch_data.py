"""Torch glue: a Dataset over one split of a FERDataset, loaders with class balancing,
and class weights (inverse frequency, or the effective number of samples)."""
from __future__ import annotations

from typing import Callable, Literal, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from .dataset import FERDataset
from .errors import UserError

Balance = Literal["none", "resample", "reweight"]


class FERTorchDataset(Dataset):
    """(C x H x W float tensor, expression label, pose label or -1) for each image of a split.

    transform: an albumentations pipeline (called as transform(image=...)['image'] on the
    uint8 RGB array) or None (the image scaled to [0, 1])."""

    def __init__(self, dataset: FERDataset, split: Optional[str] = "train",
                 transform: Optional[Callable] = None):
        self.dataset = dataset
        self.split = split
        self.index = np.arange(len(dataset)) if split is None else dataset.indices(split)
        if len(self.index) == 0:
            raise UserError(f"split {split!r} of dataset {dataset.name!r} ({dataset.source}) has no images")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels[self.index]

    def __getitem__(self, i: int):
        j = int(self.index[i])
        img = np.asarray(self.dataset.images[j])
        if self.transform is not None:
            x = self.transform(image=img)["image"]
            t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
            if t.dtype != torch.float32:
                t = t.float()
        else:
            t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        pose = -1 if self.dataset.poses is None else int(self.dataset.poses[j])
        return t, int(self.dataset.labels[j]), pose


def class_weights(labels: np.ndarray, num_classes: int, method: str = "inverse",
                  beta: float = 0.9999) -> torch.Tensor:
    """Per-class loss weights, normalised to average 1 over the classes present.

    inverse:   N / (K * n_c)
    effective: (1 - beta) / (1 - beta ** n_c)  (Cui et al. 2019, the effective number of
               samples; SCAN-CCI's "Reweight")
    A class with no sample gets weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if len(counts) > num_classes:
        raise ValueError(f"labels go up to {len(counts) - 1} but num_classes={num_classes}")
    present = counts > 0
    w = np.zeros(num_classes)
    if method == "inverse":
        w[present] = 1.0 / counts[present]
    elif method == "effective":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_weights beta={beta!r}; expected 0 <= beta < 1")
        w[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    else:
        raise ValueError(f"class_weights method={method!r}; expected 'inverse' or 'effective'")
    if present.any():
        w *= present.sum() / w.sum()
    return torch.tensor(w, dtype=torch.float32)


def make_loader(dataset: FERDataset, split: str, batch_size: int, transform: Optional[Callable] = None,
                num_workers: int = 0, balance: Balance = "none", seed: int = 0,
                shuffle: Optional[bool] = None, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over one split.

    balance: 'none'; 'resample' (WeightedRandomSampler, inverse class frequency, as many
    draws as images per epoch); 'reweight' (plain loader; `loader.class_weights` holds the
    effective-number weights for the loss). shuffle defaults to True for train only."""
    if balance not in ("none", "resample", "reweight"):
        raise ValueError(f"balance={balance!r}; expected 'none', 'resample' or 'reweight'")
    ds = FERTorchDataset(dataset, split, transform)
    g = torch.Generator().manual_seed(int(seed))
    shuffle = (split == "train") if shuffle is None else shuffle
    sampler = None
    if balance == "resample":
        cw = class_weights(ds.labels, dataset.num_classes, "inverse").double()
        sampler = WeightedRandomSampler(cw[torch.from_numpy(ds.labels)], num_samples=len(ds),
                                        replacement=True, generator=g)
        shuffle = False
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                        drop_last=drop_last, pin_memory=pin_memory, generator=g,
                        persistent_workers=num_workers > 0)
    loader.class_weights = (class_weights(ds.labels, dataset.num_classes, "effective")  # type: ignore[attr-defined]
                            if balance == "reweight" else None)
    return loader
