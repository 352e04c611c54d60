"""Sparse autoencoders on ViTs (thesis Section 4.3), in one place of their own.

* :mod:`~equidiff.sae.model` — :class:`SparseAutoencoder` and the SAELens / Prisma file formats (:func:`load_sae`);
* :mod:`~equidiff.sae.hooks` — where an SAE reads a ViT (the residual stream after a block), scoped hooks, :class:`ViTSAE`;
* :mod:`~equidiff.sae.training` — :class:`SAETrainConfig`, :func:`train_sae` on given tokens, :func:`evaluate_sae`, :func:`quality_report`;
* :mod:`~equidiff.sae.objectives` — :func:`sae_feature` / :func:`sae_code` objectives, :func:`encode_images`;
* :mod:`~equidiff.sae.features` — :class:`FeatureTable`, selectivity and the choice of features.

It builds on the engine (:mod:`equidiff.core`) and the shared training helpers only; a world's own
recipe (which ViT, which tokens, where it is cached) lives with the world, e.g.
:mod:`equidiff.worlds.digits.sae`.
"""

from equidiff.sae.features import (FeatureTable, SelectedFeature, choose_active_features, choose_features,
                                   feature_table, select_features, top_image_rows)
from equidiff.sae.hooks import (ViTSAE, block_name, check_compatible, collect_activations, resid_layer,
                                run_to_block, vit_block, vit_body)
from equidiff.sae.model import (PRISMA_CFG_FILENAME, SAE_CFG_FILENAME, SAE_KINDS, SAE_WEIGHTS_FILENAME,
                                WEIGHT_KEYS, SparseAutoencoder, load_sae, parse_config)
from equidiff.sae.objectives import (REDUCTIONS, check_reduce, encode_images, feature_indices, image_codes,
                                     reduce_tokens, sae_code, sae_feature)
from equidiff.sae.training import SAETrainConfig, evaluate_sae, quality_report, train_sae

__all__ = [
    "SAE_KINDS", "REDUCTIONS", "WEIGHT_KEYS", "SAE_CFG_FILENAME", "SAE_WEIGHTS_FILENAME", "PRISMA_CFG_FILENAME",
    "SparseAutoencoder", "parse_config", "load_sae",
    "ViTSAE", "block_name", "vit_body", "vit_block", "run_to_block", "collect_activations", "check_compatible",
    "resid_layer",
    "SAETrainConfig", "train_sae", "evaluate_sae", "quality_report",
    "reduce_tokens", "check_reduce", "feature_indices", "encode_images", "sae_feature", "sae_code", "image_codes",
    "FeatureTable", "feature_table", "SelectedFeature", "select_features", "choose_features",
    "choose_active_features", "top_image_rows",
]
