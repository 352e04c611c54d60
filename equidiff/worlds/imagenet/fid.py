"""FID in Inception-v3 features, when its weights are on this machine (thesis Tables 4.1, 4.2).

:func:`inception_fid` returns an :class:`~equidiff.core.metrics.FIDResult`: the Fréchet distance
(:func:`equidiff.core.metrics.frechet_from_statistics`, the one Fréchet distance of the project) in
Inception-v3 pool features (timm ``inception_v3.tv_in1k``), or ``value`` None with the ``reason``
(the loader's message naming the model, where it looked and the fetch command): never a silent
fallback to another feature space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from equidiff.core.metrics import FIDResult, frechet_from_statistics
from equidiff.worlds.imagenet.config import INCEPTION_MODEL
from equidiff.worlds.imagenet.loaders import ImageNetInput, ModelNotFoundError, PathLike, load_classifier, param_device

__all__ = ["load_inception", "inception_features", "inception_statistics", "inception_fid", "config_fid",
           "reference_fid"]


def load_inception(
    model: str = INCEPTION_MODEL,
    path: Optional[PathLike] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
    model_kwargs: Optional[dict] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> ImageNetInput:
    """Inception-v3 (timm, pretrained) wrapped for [-1, 1] images: resized to 299, normalised.

    Raises :class:`ModelNotFoundError` when its weights are not on this machine.
    """
    return load_classifier(model, path, cache_dir=cache_dir, allow_download=allow_download,
                           model_kwargs=model_kwargs, device=device)


@torch.no_grad()
def inception_features(inception: ImageNetInput, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """Pooled pre-logit features (N, 2048 for Inception-v3) of images in [-1, 1], float64 on CPU."""
    dev = param_device(inception)
    out = []
    for i in range(0, len(images), batch_size):
        f = inception.forward_features(images[i: i + batch_size].to(dev, torch.float32))
        out.append(inception.forward_head(f, pre_logits=True).double().cpu())
    return torch.cat(out)  # (N, D)


def inception_statistics(inception: ImageNetInput, images: torch.Tensor, batch_size: int = 50):
    """``(mu (D,), sigma (D, D))`` of the Inception features of ``images``: save them with
    ``np.savez(path, mu=mu, sigma=sigma)`` to reuse a large reference set (e.g. ImageNet val)."""
    f = inception_features(inception, images, batch_size).numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def inception_fid(
    samples: torch.Tensor,
    reference,
    figure: str,
    *,
    inception: Optional[ImageNetInput] = None,
    model: str = INCEPTION_MODEL,
    path: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = False,
    model_kwargs: Optional[dict] = None,
) -> FIDResult:
    """FID between ``samples`` and ``reference`` in Inception-v3 pool features, or why not.

    ``reference``: images (N, 3, H, W) in [-1, 1], or a ``(mu, sigma)`` pair, or the path of an
    ``.npz`` holding ``mu`` and ``sigma`` (from :func:`inception_statistics` with the same model).
    ``inception``: a loaded model; otherwise it is loaded from ``path`` / the HF cache, and if its
    weights are missing the result carries ``value=None`` and the loader's message as ``reason``.
    """
    features = f"{model} pool features"
    if inception is None:
        try:
            inception = load_inception(model, path, cache_dir=cache_dir, allow_download=allow_download,
                                       model_kwargs=model_kwargs)
        except ModelNotFoundError as err:
            return FIDResult(figure, None, f"Inception weights are not on this machine. {err}", features,
                             len(samples))
    if len(samples) < 2:
        return FIDResult(figure, None, f"FID needs at least 2 samples, got {len(samples)}", features, len(samples))
    f = inception_features(inception, samples).numpy()
    mu1, s1 = f.mean(0), np.cov(f, rowvar=False)
    if isinstance(reference, (str, os.PathLike)):
        with np.load(reference) as d:
            mu2, s2, n_ref = d["mu"], d["sigma"], int(d["n"]) if "n" in d else -1
    elif isinstance(reference, torch.Tensor):
        if len(reference) < 2:
            return FIDResult(figure, None, f"FID needs at least 2 reference images, got {len(reference)}",
                             features, len(samples), len(reference))
        g = inception_features(inception, reference).numpy()
        mu2, s2, n_ref = g.mean(0), np.cov(g, rowvar=False), len(reference)
    else:
        mu2, s2 = (np.asarray(a, dtype=np.float64) for a in reference)
        n_ref = -1
    if mu2.shape != mu1.shape:
        raise ValueError(f"reference statistics have {mu2.shape[0]} features, the model gives {mu1.shape[0]}; "
                         "compute them with the same Inception model")
    note = ""
    if len(samples) <= mu1.shape[0]:
        note = (f"{len(samples)} samples for {mu1.shape[0]} feature dimensions: the sample covariance is singular "
                "and FID is biased upward at this sample size; compare FIDs only at equal sample sizes")
    # the eigh trace root: real-valued when the covariances are singular (fewer samples than 2048 features)
    value = frechet_from_statistics(mu1, s1, mu2, s2, trace_root="eigh")
    return FIDResult(figure, value, None, features, len(samples), n_ref, note)


def config_fid(config, samples: torch.Tensor, reference, figure: str) -> FIDResult:
    """:func:`inception_fid` with the Inception weights a :class:`~equidiff.worlds.imagenet.config.PaperConfig`
    names (``inception_model``, ``inception_path``, ``cache_dir``, ``allow_download``, ``inception_kwargs``)."""
    c = config
    return inception_fid(samples, reference, figure, model=c.inception_model, path=c.inception_path,
                         cache_dir=c.cache_dir, allow_download=c.allow_download,
                         model_kwargs=c.inception_kwargs or None)


def reference_fid(config, samples: torch.Tensor, real: torch.Tensor, figure: str) -> FIDResult:
    """Inception FID of ``samples`` against ``config.fid_reference`` (an .npz of statistics) when set,
    else against the real images ``real`` (the user's query images)."""
    ref = config.fid_reference
    if ref is not None and not Path(ref).is_file():
        return FIDResult(figure, None, f"fid_reference {ref} does not exist", n_samples=len(samples))
    return config_fid(config, samples.float().cpu(), ref if ref is not None else real.float().cpu(), figure)
