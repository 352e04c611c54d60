"""The paper world's prior and classifier loaded at once (thesis Chapter 4), for scripts.

:func:`load_paper_models` loads the latent DiT prior and the ResNet-50 of a :class:`PaperConfig`
(:mod:`equidiff.worlds.imagenet.loaders`; nothing downloads unless ``allow_download``) into
:class:`PaperModels`, ready for Algorithm 1 in batches (:func:`equidiff.core.batched.find_invariants_batched`):
what ``python -m equidiff.run.torchrun`` and the GPU benchmark run. The chapters get the same
pieces, each loaded on first use, through the paper :class:`~equidiff.worlds.base.World`
(:mod:`equidiff.worlds.imagenet.world`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from equidiff.core.batched import find_invariants_batched
from equidiff.core.metrics import FIDResult
from equidiff.core.objectives import Objective
from equidiff.worlds.imagenet.config import PaperConfig
from equidiff.worlds.imagenet.fid import config_fid
from equidiff.worlds.imagenet.loaders import (AutocastPrior, ImageNetInput, autocast_objective, load_classifier,
                                              load_latent_prior, paper_neuron_objective, resolve_device)

__all__ = ["PaperModels", "load_paper_models"]


@dataclass
class PaperModels:
    """The paper world's models, ready for :func:`find_invariants_batched`."""

    prior: object  # Prior: LatentDiTPrior (under AutocastPrior when bf16), or the caller's own backbone
    classifier: ImageNetInput  # resnet50 taking [-1, 1] images
    config: PaperConfig
    device: torch.device
    sae: object = None  # hook point: equidiff.sae loads config.sae_path (Prisma / SAELens); not loaded here

    def neuron_objective(self, channel: int, reduce: str = "map") -> Objective:
        """The pre-ReLU map of ``channel`` (Section 4.2.2), under bf16 autocast when configured."""
        obj = paper_neuron_objective(self.classifier, channel, reduce=reduce)
        return autocast_objective(obj) if self.config.bf16 else obj

    def find_invariants(self, objective, query, config, **kwargs):
        """Algorithm 1 with this config's batch size (see :func:`find_invariants_batched`)."""
        query = query.to(self.device)
        return find_invariants_batched(objective, query, self.prior, config, self.config.batch_size, **kwargs)

    def fid(self, samples, reference, figure: str) -> FIDResult:
        """Inception FID per :func:`~equidiff.worlds.imagenet.fid.inception_fid`, from this config's Inception weights."""
        return config_fid(self.config, samples, reference, figure)


def load_paper_models(config: Optional[PaperConfig] = None, *, prior=None) -> PaperModels:
    """Load the prior and classifier of ``config`` (nothing downloads unless ``allow_download``).

    ``prior``: another backbone implementing the Prior protocol (e.g. LightningDiT) instead of
    the diffusers DiT; it is used as given (wrapped in :class:`AutocastPrior` when ``bf16``).
    """
    c = config or PaperConfig()
    if not isinstance(c, PaperConfig):
        raise TypeError(f"config must be a PaperConfig, got {type(c).__name__}")
    dev = resolve_device(c.device)
    if prior is None:
        prior = load_latent_prior(c.dit_model, c.dit_path, cache_dir=c.cache_dir, allow_download=c.allow_download,
                                  num_steps=c.ddim_steps, checkpointing=c.checkpointing, clamp=c.clamp, device=dev)
    if c.bf16:
        prior = AutocastPrior(prior)
    classifier = load_classifier(c.classifier_model, c.classifier_path, cache_dir=c.cache_dir,
                                 allow_download=c.allow_download, input_size=c.classifier_input_size,
                                 model_kwargs=c.classifier_kwargs, device=dev)
    return PaperModels(prior, classifier, c, dev)
