"""Query images x* from the user's files, and what the classifier says of them (thesis Section 4.2.2).

The project ships no ImageNet images: the paper world starts from a folder (or a list) of the
user's own files, resized and centre-cropped to the prior's resolution, in [-1, 1]
(:func:`load_query_images`). At paper scale they carry no labels; the classifier's own class
stands in (:func:`predict_classes`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from equidiff._validate import bad as _bad, is_int as _is_int
from equidiff.core.objectives import Objective
from equidiff.worlds.imagenet.loaders import PathLike, param_device

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_query_images", "query_image_files", "strongest_query",
           "predict_classes"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def list_images(source: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    """Image files of a folder (sorted, not recursive) or the given file paths, checked to exist."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise FileNotFoundError(
                    f"no images in folder {p} (looked for files ending in {', '.join(IMAGE_EXTENSIONS)})"
                )
            return files
        sources = [p]
    else:
        sources = [Path(s) for s in source]
        if not sources:
            raise ValueError("source must be a folder or a non-empty list of image files, got an empty list")
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"query image file(s) not found: {', '.join(missing)}")
    return sources


def load_query_images(
    source: Union[PathLike, Sequence[PathLike]],
    size: int = 256,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
) -> tuple[torch.Tensor, list[Path]]:
    """Query images x* from a folder or file paths: ``((N, 3, size, size) in [-1, 1], paths)``.

    Each image is converted to RGB, its shorter side resized to ``round(size / crop_pct)``
    (``crop_pct=1``: to ``size``, as DiT/ADM preprocess ImageNet; timm's ``crop_pct`` for the
    classifier's own eval transform) and centre-cropped to ``size`` × ``size`` — the prior's image
    size (256 for DiT-XL-2-256); :class:`ImageNetInput` then resizes for the classifier, exactly as
    it does for the samples, so query and samples take the same path into the objective.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if not _is_int(size) or size < 8:
        raise _bad("size", size, "an integer ≥ 8 (pixels)")
    if not isinstance(crop_pct, (int, float)) or isinstance(crop_pct, bool) or not (0 < crop_pct <= 1):
        raise _bad("crop_pct", crop_pct, "a number in (0, 1]")
    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    if interpolation not in modes:
        raise _bad("interpolation", interpolation, f"one of {tuple(modes)}")
    files = list_images(source)
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {f}: {err}") from err
        im = TF.resize(im, int(round(size / crop_pct)), interpolation=modes[interpolation], antialias=True)
        im = TF.center_crop(im, [size, size])
        out.append(TF.pil_to_tensor(im).float() / 255.0)  # (3, size, size) in [0, 1]
    return torch.stack(out) * 2.0 - 1.0, files  # (N, 3, size, size) in [-1, 1]


def query_image_files(query_images) -> list[Path]:
    """The files of the notebook parameter ``query_images`` (a folder, or a list of image files), checked."""
    if query_images is None:
        raise ValueError("query_images must be a folder of images or a list of image files for profile 'paper' "
                         "(the project ships no ImageNet images: e.g. a folder of ImageNet validation images), got None")
    if isinstance(query_images, (str, os.PathLike)) and not Path(query_images).exists():
        raise FileNotFoundError(f"query_images: folder or file {query_images} does not exist")
    if not isinstance(query_images, (str, os.PathLike, list, tuple)):
        raise _bad("query_images", query_images, "a folder or a list of image files")
    try:
        return list_images(query_images)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"query_images: {err}") from None


@torch.no_grad()
def strongest_query(objective: Objective, images: torch.Tensor, batch_size: int = 32) -> tuple[int, torch.Tensor]:
    """Index and mean measurement of the image whose objective is largest on average (Section 4.2.2,
    step 1: "a query image that strongly activates the neuron"): ``(index, (N,) means)``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        raise _bad("images", tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__,
                   "a non-empty tensor (N, C, H, W)")
    means = torch.cat([objective(images[i: i + batch_size]).float().mean(1).cpu()
                       for i in range(0, len(images), batch_size)])  # (N,)
    return int(means.argmax()), means


@torch.no_grad()
def predict_classes(classifier: nn.Module, images: torch.Tensor, batch_size: int = 32,
                    probabilities: bool = False) -> torch.Tensor:
    """The classifier's class (N,) — or its softmax probabilities (N, K) — of images in [-1, 1], on CPU."""
    dev = param_device(classifier)
    out = []
    for i in range(0, len(images), batch_size):
        logits = classifier(images[i: i + batch_size].to(dev)).float()
        out.append((torch.softmax(logits, 1) if probabilities else logits.argmax(1)).cpu())
    return torch.cat(out)
