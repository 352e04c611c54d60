"""The ImageNet-scale world as a :class:`~equidiff.worlds.base.World` (profile ``paper``).

ResNet-50 (ImageNet normalisation inside), the latent DiT prior, the user's query images (no
labels: the classifier's own class stands in), Inception FID when its weights are on the machine.
Nothing downloads unless the PaperConfig allows it.

Loading the world checks the paper parameters and reads the query images (cheap); every model is
loaded on its first use and kept, so a chapter loads only what it reads — the SAE chapter the ViT,
its SAE and the prior, never ResNet-50; the neuron and classifier chapters ResNet-50 and the prior,
never the ViT. A missing model raises :class:`~equidiff.worlds.imagenet.loaders.ModelNotFoundError`
(naming the model, where it looked and the fetch command) when it is first read.

What it holds, beyond the :class:`World` fields:

* ``world.classifier`` — ResNet-50 in :class:`~equidiff.worlds.imagenet.loaders.ImageNetInput`
  (loaded on first read), ``world.neuron_layer`` its last stage's pre-ReLU map (Section 4.2.1);
* ``world.make_prior(ddim_steps)`` — the latent DiT chain with T = ``ddim_steps`` (None: the
  config's): loaded on the first call, and every other T reuses the loaded transformer and VAE;
  checkpointing and clamping are the config's;
* ``world.image_files`` — the query images' paths, in the order of ``world.images``;
  ``world.wrap_objective(obj)`` — ``obj`` under bf16 autocast when ``PaperConfig.bf16``;
* parts (:meth:`World.part`): ``"vit"`` (the SAE chapter's ViT) and ``"sae"``
  (:class:`~equidiff.sae.ViTSAE`: the SAE of ``PaperConfig.sae_path`` on that ViT).

Scripts that want the prior and ResNet-50 of a :class:`PaperConfig` at once, without query images
(``python -m equidiff.run.torchrun``, the GPU benchmark), use
:func:`equidiff.worlds.imagenet.models.load_paper_models`.
"""

from __future__ import annotations

from pathlib import Path

from equidiff.sae import ViTSAE, load_sae, resid_layer
from equidiff.worlds.base import World
from equidiff.worlds.imagenet.config import PAPER_NEURONS, paper_parameters
from equidiff.worlds.imagenet.fid import reference_fid
from equidiff.worlds.imagenet.images import load_query_images, query_image_files
from equidiff.worlds.imagenet.loaders import (AutocastPrior, autocast_objective, latent_prior_with_steps, load_classifier,
                                              load_latent_prior, load_vit, paper_neuron_layer, resolve_device)
from equidiff.worlds.settings import SETTINGS

__all__ = ["paper_world", "PAPER_ALIGNMENT"]

NO_LABELS = "the query images carry no class labels at paper scale (the classifier's class stands in)"
NO_TEST = "no held-out real images at paper scale (the digits world's real-image floor)"
NO_JUDGE = ("no judge classifier at paper scale (the digits world labels samples with a separate digits "
            "classifier; the paper world loads none)")
NO_CONCEPTS = ("the query images carry no concept labels at paper scale: neuron alignment is the thesis' "
               "SemanticLens r (it needs CLIP and ImageNet), not recomputed here")
NO_GUIDANCE = "guidance steers a pixel-space DDIM chain; the latent DiT has none"
NO_VIT_CLASSES = "the ViT's head does not name the world's classes (a CLIP ViT's head is an image embedding)"

# the thesis' SemanticLens alignment of its three ResNet-50 neurons (Table 4.1)
PAPER_ALIGNMENT = {1656: 0.945, 1052: 0.880, 421: 0.952}


def paper_world(paper_config=None, query_images=None, batch_size=None, bf16=None, device=None,
                ddim_steps=None, **unknown) -> World:
    """The paper world from a notebook's paper parameters (see :func:`equidiff.worlds.imagenet.config.paper_parameters`);
    ``ddim_steps``: the config's T (a chapter may still ask ``make_prior`` for another)."""
    if unknown:
        name = sorted(unknown)[0]
        raise ValueError(f"{name} is not a parameter of the 'paper' world (it takes paper_config, query_images, "
                         f"batch_size, bf16, device, ddim_steps; the models come from PaperConfig), got {unknown[name]!r}")
    cfg = paper_parameters(paper_config, batch_size=batch_size, bf16=bf16, device=device, ddim_steps=ddim_steps)
    files = query_image_files(query_images)
    images, files = load_query_images(files, size=cfg.image_size)  # (N, 3, S, S) in [-1, 1]
    dev = resolve_device(cfg.device)

    def classifier():
        return load_classifier(cfg.classifier_model, cfg.classifier_path, cache_dir=cfg.cache_dir,
                               allow_download=cfg.allow_download, input_size=cfg.classifier_input_size,
                               model_kwargs=cfg.classifier_kwargs, device=dev)

    def prior(ddim_steps=None):
        # the chain of the config's T is loaded from disk; another T reuses its transformer and VAE
        if ddim_steps is not None:
            return latent_prior_with_steps(world.part("prior"), ddim_steps)
        p = load_latent_prior(cfg.dit_model, cfg.dit_path, cache_dir=cfg.cache_dir, allow_download=cfg.allow_download,
                              num_steps=cfg.ddim_steps, checkpointing=cfg.checkpointing, clamp=cfg.clamp, device=dev)
        return AutocastPrior(p) if cfg.bf16 else p

    def vit():
        return load_vit(cfg.vit_model, cfg.vit_path, cache_dir=cfg.cache_dir, allow_download=cfg.allow_download,
                        input_size=cfg.vit_input_size, model_kwargs=cfg.vit_kwargs, device=dev)

    def make_prior(ddim_steps_: int | None = None, checkpointing=None, clamp=None):
        # T from the chapter (None: the config's); checkpointing and clamping are the config's (PaperConfig)
        if ddim_steps_ is None or ddim_steps_ == cfg.ddim_steps:
            return world.part("prior")
        return world.part("prior", ddim_steps=ddim_steps_)

    def sae(layer=None, sae_kind=None, expansion=None, sae_steps=None, vit_preset=None, seed=None):
        # the SAE of PaperConfig.sae_path on the ViT; seed is not used (the SAE is loaded, not trained)
        for name, value in dict(layer=layer, sae_kind=sae_kind, expansion=expansion, sae_steps=sae_steps,
                                vit_preset=vit_preset).items():
            if value is not None:
                raise ValueError(f"{name} is a parameter of the digits worlds (cpu, smoke) only: at paper scale the "
                                 f"SAE's folder (PaperConfig.sae_path, sae_layer, vit_model) decides it; leave it None, "
                                 f"got {value!r}")
        if cfg.sae_path is None:
            raise ValueError("sae_path: PaperConfig.sae_path must name a folder holding an SAE in the SAELens "
                             "(cfg.json + sae_weights.safetensors) or Prisma (config.json + one .safetensors) layout, "
                             "got None")
        try:
            s = load_sae(cfg.sae_path, device=dev)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"sae_path: {err}") from None
        v = world.part("vit")
        layer = resid_layer(s, v, cfg.sae_layer)
        return ViTSAE(v, layer, s, cfg.vit_model,
                      description=(f"ViT {cfg.vit_model}; SAE {cfg.sae_path} ({s.hook_name or f'blocks.{layer}'}, "
                                   f"trained on {s.model_name or 'an unnamed model'}); prior {cfg.dit_model}; "
                                   f"{len(images)} query images"),
                      record={"vit": cfg.vit_model, "vit_test_accuracy": None, "classifier": None, "ddpm": cfg.dit_model,
                              "sae_folder": Path(cfg.sae_path).name, "sae_path": cfg.sae_path,
                              "sae_hook_name": s.hook_name, "sae_model_name": s.model_name},
                      features=cfg.sae_features)

    def fid(samples, real, figure):
        return reference_fid(cfg, samples, real, figure)

    neurons = {int(c): (PAPER_NEURONS.get(int(c), f"channel {c}"), PAPER_ALIGNMENT.get(int(c))) for c in cfg.neurons}
    world = World(
        name="paper",
        description=f"ImageNet scale: {cfg.classifier_model}, {cfg.dit_model}, {len(images)} query images",
        classifier=None, images=images, labels=None, test_images=None,
        make_prior=make_prior, fid=fid, judge=None,
        neuron_layer=None, neuron_read="input",
        known_units=neurons,
        image_files=list(files),
        objective_wrapper=autocast_objective if cfg.bf16 else None,  # objectives under bf16 autocast
        defaults={ch: {**s, "ddim_steps": cfg.ddim_steps} for ch, s in SETTINGS["paper"].items()},
        batch_size=cfg.batch_size, device=dev,
        lacks={"labels": NO_LABELS, "test_images": NO_TEST, "judge": NO_JUDGE, "unit_concepts": NO_CONCEPTS,
               "guidance": NO_GUIDANCE, "vit_classes": NO_VIT_CLASSES},
        record={"world": "paper", "paper_config": cfg.to_dict(), "device": str(dev),
                "query_images": [str(f) for f in files]},
        loaders={
            "classifier": classifier,
            "neuron_layer": lambda: paper_neuron_layer(world.classifier)[0],
            "prior": prior,
            "vit": vit,
            "sae": sae,
        },
        params=dict(paper_config=paper_config, query_images=query_images, batch_size=batch_size, bf16=bf16,
                    device=device, ddim_steps=ddim_steps),
    )
    return world
