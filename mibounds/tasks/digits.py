"""Small image data that needs no download: scikit-learn's 8x8 handwritten digits.

The examples use it for contrastive pre-training on the CPU; pass ``path`` to use your own data
in the same layout instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_digits", "split_by_class"]


def load_digits(path: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Images ``(N, 1, H, W)`` scaled to [0, 1] (float32) and labels ``(N,)`` (int64).

    Args:
        path: ``None`` for scikit-learn's digits (1797 images of 8x8, 10 classes; needs
            ``scikit-learn``, in the ``examples`` extra), or a ``.npz`` file with arrays
            ``images`` (``(N, H, W)`` or ``(N, C, H, W)``, any numeric range) and ``labels``.

    Raises:
        ImportError: scikit-learn is missing and no path was given.
        ValueError: the file lacks ``images`` or ``labels``, or their lengths differ.

    Example:
        >>> images, labels = load_digits()
        >>> images.shape, labels.shape
        (torch.Size([1797, 1, 8, 8]), torch.Size([1797]))
    """
    if path is None:
        try:
            from sklearn.datasets import load_digits as sk_digits
        except ImportError as e:  # pragma: no cover - the examples extra has it
            raise ImportError(
                "load_digits() needs scikit-learn: pip install 'mibounds[examples]', "
                "or pass path= to an .npz file with 'images' and 'labels'"
            ) from e
        data = sk_digits()
        images, labels = np.asarray(data.images), np.asarray(data.target)
    else:
        with np.load(Path(path)) as f:
            missing = {"images", "labels"} - set(f.files)
            if missing:
                raise ValueError(
                    f"{path} must contain arrays 'images' and 'labels'; missing {missing}"
                )
            images, labels = f["images"], f["labels"]
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    lo, hi = x.amin(), x.amax()
    x = (x - lo) / (hi - lo).clamp_min(1e-12)
    return x, torch.as_tensor(labels, dtype=torch.long)


def split_by_class(
    images: Tensor,
    labels: Tensor,
    classes: list[int] | None = None,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Keep the given ``classes`` (relabelled 0, 1, ... in that order) and split them at random
    into ``(train_images, train_labels, test_images, test_labels)``.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1), an absent class, or lengths that differ.

    Example:
        >>> x, y = torch.rand(10, 1, 2, 2), torch.arange(10) % 2
        >>> xtr, ytr, xte, yte = split_by_class(x, y, [1], test_fraction=0.4)
        >>> len(xtr), len(xte), set(ytr.tolist())
        (3, 2, {0})
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    new = torch.full_like(labels, -1)
    for i, c in enumerate(classes):
        mask = labels == c
        if not bool(mask.any()):
            raise ValueError(f"class {c} does not occur in labels")
        keep |= mask
        new[mask] = i
    idx = torch.nonzero(keep).squeeze(1)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
    n_test = max(1, round(test_fraction * len(idx)))
    test, train = idx[:n_test], idx[n_test:]
    return images[train], new[train], images[test], new[test]
