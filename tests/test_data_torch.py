"""Albumentations pipelines, backbone normalisation, torch datasets, loaders and class weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runners.data import load_dataset
from runners.data.torch_data import FERTorchDataset, class_weights, make_loader
from runners.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform,
                                     normalization_for)


@pytest.fixture(scope="module")
def synth():
    return load_dataset("synthetic", n=420, image_size=40, seed=0, cache=False)


def test_normalization_from_timm_cfg():
    assert normalization_for("resnet18") == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalization_for("vit_base_patch16_224") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert normalization_for("no_such_backbone_xyz") == (IMAGENET_MEAN, IMAGENET_STD)


def test_eval_transform_resizes_and_normalises():
    img = np.full((50, 30, 3), 128, np.uint8)
    out = build_eval_transform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(image=img)["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert np.allclose(out, (128 / 255 - 0.5) / 0.25, atol=1e-5)


def test_train_transform_strength(synth):
    img = np.asarray(synth.images[0])
    zero = build_train_transform(48, 0.0)
    assert np.array_equal(zero(image=img)["image"], build_eval_transform(48)(image=img)["image"])
    names = [type(t).__name__ for t in build_train_transform(48, 1.0).transforms]
    assert names == ["RandomResizedCrop", "HorizontalFlip", "Affine", "ColorJitter", "CoarseDropout", "Normalize"]
    rng_outs = [build_train_transform(48, s)(image=img)["image"] for s in (0.3, 1.0)]
    assert all(o.shape == (48, 48, 3) and o.dtype == np.float32 for o in rng_outs)
    # stronger augmentation moves the image further from the plain resize, on average
    base = build_eval_transform(48)(image=img)["image"]
    dist = {s: np.mean([np.abs(build_train_transform(48, s)(image=img)["image"] - base).mean() for _ in range(30)])
            for s in (0.2, 1.0)}
    assert dist[1.0] > dist[0.2]
    with pytest.raises(ValueError, match="strength=1.5"):
        build_train_transform(48, 1.5)


def test_torch_dataset_items(synth):
    ds = FERTorchDataset(synth, "train", build_eval_transform(32))
    x, y, p = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= p < 5
    raw = FERTorchDataset(synth, "test")
    x, _, _ = raw[0]
    assert x.shape == (3, 40, 40) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_pose_is_minus_one_without_poses(synth):
    ds = synth.take(np.arange(len(synth)))
    ds.poses, ds.pose_classes = None, []
    _, _, p = FERTorchDataset(ds, "val")[0]
    assert p == -1


def imbalanced(synth):
    keep = np.concatenate([np.flatnonzero(synth.labels == c)[: 60 if c == 3 else 6] for c in range(7)])
    ds = synth.take(keep)
    ds.splits[:] = "train"
    return ds


def test_loader_resample_balances_classes(synth):
    ds = imbalanced(synth)
    plain = make_loader(ds, "train", 32, balance="none", seed=0)
    res = make_loader(ds, "train", 32, balance="resample", seed=0)
    drawn = lambda loader: torch.cat([y for _ in range(5) for _, y, _ in loader])  # noqa: E731
    plain_counts = torch.bincount(drawn(plain), minlength=7).float()
    res_counts = torch.bincount(drawn(res), minlength=7).float()
    assert plain_counts[3] / plain_counts.sum() > 0.5
    assert (res_counts / res_counts.sum()).max() < 0.3 and (res_counts > 0).all()
    # seeded: the same draws again
    assert torch.equal(torch.cat([y for _, y, _ in make_loader(ds, "train", 32, balance="resample", seed=0)]),
                       torch.cat([y for _, y, _ in make_loader(ds, "train", 32, balance="resample", seed=0)]))
    rew = make_loader(ds, "train", 32, balance="reweight")
    assert rew.class_weights is not None and rew.class_weights.argmin() == 3
    assert plain.class_weights is None


def test_loader_with_workers_and_augmentation(synth):
    loader = make_loader(synth, "train", 16, build_train_transform(32, 0.5), num_workers=1, seed=0)
    x, y, p = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,) and p.shape == (16,)


def test_class_weights():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    inv = class_weights(labels, 4)
    assert inv[3] == 0 and torch.isclose(inv[:3].mean(), torch.tensor(1.0))
    assert torch.allclose(inv[:3] / inv[2], torch.tensor([1 / 90, 1 / 9, 1.0]), atol=1e-6)
    eff = class_weights(labels, 4, "effective", beta=0.99)
    expect = torch.tensor([(1 - 0.99) / (1 - 0.99 ** n) for n in (90, 9, 1)])
    assert torch.allclose(eff[:3] / eff[2], expect / expect[2], atol=1e-5)
    # beta -> 0: every present class the same weight
    assert torch.allclose(class_weights(labels, 3, "effective", beta=0.0), torch.ones(3))
    with pytest.raises(ValueError, match="method='focal'"):
        class_weights(labels, 3, "focal")
