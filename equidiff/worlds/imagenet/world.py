"""The ImageNet-scale world as a :class:`~equidiff.worlds.base.World` (profile ``paper``).

ResNet-50 (ImageNet normalisation inside), the latent DiT prior, the user's query images (no
labels: the classifier's own class stands in), Inception FID when its weights are on the machine.
Nothing downloads unless the PaperConfig allows it.
"""

from __future__ import annotations

from equidiff.worlds.base import World
from equidiff.worlds.settings import SETTINGS
from equidiff.worlds.imagenet import models as paper

NO_LABELS = "the query images carry no class labels at paper scale (the classifier's class stands in)"
NO_TEST = "no held-out real images at paper scale (the digits world's real-image floor)"
NO_JUDGE = ("no judge classifier at paper scale (the digits world labels samples with a separate digits "
            "classifier; the paper world loads none)")
NO_CONCEPTS = ("the query images carry no concept labels at paper scale: neuron alignment is the thesis' "
               "SemanticLens r (it needs CLIP and ImageNet), not recomputed here")
NO_GUIDANCE = "guidance steers a pixel-space DDIM chain; the latent DiT has none"


def paper_world(paper_config=None, query_images=None, batch_size=None, bf16=None, device=None,
                ddim_steps=None) -> World:
    """The paper world from a notebook's paper parameters (see :func:`equidiff.worlds.imagenet.models.paper_parameters`)."""
    inputs = paper.load_paper_inputs(paper_config, query_images, batch_size=batch_size, bf16=bf16, device=device,
                                     ddim_steps=ddim_steps)
    models, cfg = inputs.models, inputs.config

    def make_prior(ddim_steps_: int | None = None, checkpointing=None, clamp=None):
        if ddim_steps_ is not None and ddim_steps_ != cfg.ddim_steps:
            raise paper._bad("ddim_steps", ddim_steps_, f"the prior's T ({cfg.ddim_steps}): the paper world loads "
                             "its latent chain once; pass ddim_steps when loading it")
        return models.prior

    def fid(samples, real, figure):
        return paper.fid_against_reference(models, samples, real, figure)

    neurons = {int(c): (paper.PAPER_NEURONS.get(int(c), f"channel {c}"), PAPER_ALIGNMENT.get(int(c)))
               for c in cfg.neurons}
    return World(
        name="paper",
        description=f"ImageNet scale: {cfg.classifier_model}, {cfg.dit_model}, {len(inputs.images)} query images",
        classifier=models.classifier, images=inputs.images, labels=None, test_images=None,
        make_prior=make_prior, fid=fid, judge=None,
        neuron_layer=paper.paper_neuron_layer(models.classifier)[0], neuron_read="input",
        known_units=neurons,
        defaults={ch: {**s, "ddim_steps": cfg.ddim_steps} for ch, s in SETTINGS["paper"].items()},
        batch_size=cfg.batch_size, device=models.device,
        lacks={"labels": NO_LABELS, "test_images": NO_TEST, "judge": NO_JUDGE, "unit_concepts": NO_CONCEPTS,
               "guidance": NO_GUIDANCE},
        record={"world": "paper", "paper_config": cfg.to_dict(), "device": str(models.device),
                "query_images": [str(f) for f in inputs.files]},
        loaders={"inputs": lambda: inputs},
        params=dict(paper_config=paper_config, query_images=query_images, batch_size=batch_size, bf16=bf16,
                    device=device, ddim_steps=ddim_steps),
    )


# the thesis' SemanticLens alignment of its three ResNet-50 neurons (Table 4.1)
PAPER_ALIGNMENT = {1656: 0.945, 1052: 0.880, 421: 0.952}
