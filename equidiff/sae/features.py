"""Choosing SAE features (thesis Section 4.3.1: "monosemantic features with high sparsity scores").

:func:`feature_table` measures every feature on a set of images: its image-level activation, its
*firing rate* (the share of images on which it is active at all) and, where the images carry
concept labels (a world's own labelling, passed in), its *selectivity* for each concept — the
share of its total activation mass that falls on images with that concept: 1 means it fires on
nothing else; a feature that ignored the ten digit classes would score about 0.1.

:func:`choose_features` is the notebook's choice: ``"auto"`` picks, among features whose firing
rate lies in a window, the most selective ones for distinct concepts (:func:`select_features`);
on images without concept labels (the paper world's query images) the ones most active on them
(:func:`choose_active_features`); or a list of indices as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from equidiff._validate import bad, is_int, is_num
from equidiff.core.units import concept_columns, greedy_distinct_pairs, is_index
from equidiff.sae.model import SparseAutoencoder
from equidiff.sae.objectives import image_codes

__all__ = ["FeatureTable", "feature_table", "SelectedFeature", "select_features", "choose_features",
           "choose_active_features", "top_image_rows"]


@dataclass
class FeatureTable:
    """Every SAE feature's image-level activation, firing rate and (with concept labels) selectivity over an image set."""

    activations: torch.Tensor  # (N, d_sae) image-level activations (reduce over tokens)
    images: torch.Tensor  # (N, C, H, W) in [-1, 1]
    labels: Optional[torch.Tensor]  # (N,) true classes; None: the images carry no labels
    concepts: list  # K concept names ([] when the images carry no concept labels)
    concept_labels: np.ndarray  # (N, K) bool
    firing_rate: np.ndarray  # (d_sae,) share of images on which the feature is active (> 0)
    selectivity: np.ndarray  # (d_sae, K) share of the feature's activation mass on images with the concept
    reduce: str  # how tokens were reduced
    image_names: Optional[list] = None  # (N,) file names of the images, when they come from files

    @property
    def has_concepts(self) -> bool:
        """True when the images carry concept labels (selectivity is defined)."""
        return len(self.concepts) > 0

    def best_concept(self, feature: int, concepts: Optional[Sequence[str]] = None) -> tuple[str, float]:
        """The concept (among ``concepts``, default all) ``feature`` is most selective for, and its selectivity."""
        feature = self.check_feature(feature)
        names = list(self.concepts) if concepts is None else list(concepts)
        cols = [self.concepts.index(c) for c in names]
        j = int(np.argmax(self.selectivity[feature, cols]))
        return names[j], float(self.selectivity[feature, cols[j]])

    def top_activating(self, feature: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (into ``images``) of the ``n`` images that activate ``feature`` most, and the activations."""
        feature = self.check_feature(feature)
        if not is_int(n) or not (1 <= n <= len(self.activations)):
            raise bad("n", n, f"an integer in [1, {len(self.activations)}]")
        vals, idx = torch.topk(self.activations[:, feature], n)
        return idx, vals

    def check_feature(self, feature) -> int:
        """``feature`` as an int, if it indexes a feature of the SAE; else ``ValueError`` naming it."""
        d = self.activations.shape[1]
        if not is_index(feature) or not (0 <= feature < d):
            raise bad("feature", feature, f"an integer in [0, {d - 1}] (features of the SAE)")
        return int(feature)


@torch.no_grad()
def feature_table(vit: nn.Module, layer: int, sae: SparseAutoencoder, images: torch.Tensor, labels=None,
                  concepts: Optional[tuple] = None, reduce: str = "cls", batch: int = 256,
                  image_names: Optional[Sequence] = None) -> FeatureTable:
    """Image-level activations of every feature on ``images``, their firing rates, and their selectivities
    for ``concepts`` = ``(matrix (N, K) bool, K names)``: the world's concept labels of the images (the
    digits world: digit classes and stroke shapes); None: no concepts, no selectivity."""
    acts = image_codes(vit, layer, sae, images, reduce, batch)  # (N, d_sae)
    matrix, names = concepts if concepts is not None else (np.zeros((len(images), 0), dtype=bool), [])
    matrix = np.asarray(matrix, dtype=bool)
    if matrix.shape != (len(images), len(names)):
        raise bad("concepts", matrix.shape, f"a (matrix, names) pair with matrix ({len(images)}, {len(names)})")
    a = acts.double().numpy()
    mass = a.sum(0)  # (d_sae,)
    sel = np.divide(a.T @ matrix.astype(np.float64), mass[:, None],
                    out=np.zeros((a.shape[1], matrix.shape[1])), where=mass[:, None] > 0)
    rate = (a > 0).mean(0)
    y = torch.as_tensor(np.asarray(labels)) if labels is not None else None
    return FeatureTable(acts, images, y, list(names), matrix, rate, sel, reduce,
                        [str(f) for f in image_names] if image_names is not None else None)


@dataclass
class SelectedFeature:
    feature: int  # index into the SAE's features
    concept: Optional[str]  # the concept it is most selective for (None: the images carry no concept labels)
    selectivity: Optional[float]  # share of its activation mass on images with that concept (None: no labels)
    firing_rate: float  # share of images on which it is active


def _check_rates(min_rate, max_rate) -> None:
    if not is_num(min_rate) or not is_num(max_rate) or not (0 <= min_rate < max_rate <= 1):
        raise bad("min_rate, max_rate", (min_rate, max_rate), "numbers with 0 ≤ min_rate < max_rate ≤ 1")


def select_features(table: FeatureTable, k: int = 2, concepts: Optional[Sequence[str]] = None,
                    min_rate: float = 0.02, max_rate: float = 0.5) -> list[SelectedFeature]:
    """``k`` monosemantic features for ``k`` different concepts: among the features whose firing rate
    lies in [min_rate, max_rate] (neither almost dead nor firing on everything), greedily take the
    (feature, concept) pair of highest selectivity, then the next with a new concept and feature."""
    names, cols = concept_columns(table.concepts, concepts, k, "feature")
    _check_rates(min_rate, max_rate)
    ok = (table.firing_rate >= min_rate) & (table.firing_rate <= max_rate)
    s = np.where(ok[:, None], table.selectivity[:, cols], -1.0)  # (d_sae, K')
    chosen = [SelectedFeature(f, names[j], float(s[f, j]), float(table.firing_rate[f]))
              for f, j in greedy_distinct_pairs(s, k, floor=0.0)]  # -1 marks features outside the rate window
    if not chosen:
        raise ValueError(f"no feature has a firing rate in [{min_rate}, {max_rate}]; widen the range")
    return chosen


def choose_active_features(activations: torch.Tensor, features="auto", k: int = 3, min_rate: float = 0.05,
                           max_rate: float = 0.5, configured: Sequence[int] = ()) -> list[SelectedFeature]:
    """Features of images without concept labels: a list of indices as given, or ``"auto"``:
    ``configured`` (e.g. ``PaperConfig.sae_features``) when non-empty, else the ``k`` features with the
    highest mean activation over the images among those active on a share of them in
    [``min_rate``, ``max_rate``] (sparse features, as the labelled choice's firing-rate window).
    ``activations``: (N, d_sae) image-level activations. Concept and selectivity are None."""
    n, d = activations.shape
    rate = (activations > 0).double().mean(0)  # (d_sae,) share of the images on which each feature fires (as FeatureTable's)
    if isinstance(features, str) and features == "auto" and configured:
        if not all(is_index(f) and 0 <= f < d for f in configured):
            raise bad("sae_features", tuple(configured), f"feature indices in [0, {d - 1}] (features of the SAE)")
        features = list(configured)
    if isinstance(features, str) and features == "auto":
        if not is_int(k) or k < 1:
            raise bad("k", k, "an integer ≥ 1")
        _check_rates(min_rate, max_rate)
        ok = (rate >= min_rate) & (rate <= max_rate) & (activations.amax(0) > 0)
        if not bool(ok.any()):
            raise ValueError(f"no SAE feature is active on a share of the {n} query images in [{min_rate}, {max_rate}] "
                             "(min_rate, max_rate); widen the range or give features as a list")
        score = torch.where(ok, activations.mean(0), torch.tensor(float("-inf")))
        order = torch.argsort(score, descending=True, stable=True)[: min(k, int(ok.sum()))]
        features = [int(f) for f in order]
    if not isinstance(features, (list, tuple)) or not features or not all(is_index(f) and 0 <= f < d for f in features):
        raise bad("features", features, f"'auto' or a non-empty list of feature indices in [0, {d - 1}]")
    return [SelectedFeature(int(f), None, None, float(rate[int(f)])) for f in features]


def choose_features(table: FeatureTable, features="auto", concepts: Optional[Sequence[str]] = None, k: int = 2,
                    min_rate: float = 0.02, max_rate: float = 0.5,
                    configured: Sequence[int] = ()) -> list[SelectedFeature]:
    """The notebook's choice. With concept labels: ``"auto"`` = :func:`select_features` among ``concepts``
    (default all of the table's), or a list of feature indices, each paired with the concept of
    ``concepts`` it is most selective for. Without (``table.has_concepts`` False):
    :func:`choose_active_features` (``configured``: the features a loaded SAE's config names)."""
    if not table.has_concepts:
        return choose_active_features(table.activations, features, k, min_rate, max_rate, configured)
    allowed = list(table.concepts) if concepts is None else list(concepts)
    if isinstance(features, str) and features == "auto":
        if not configured:
            return select_features(table, k, allowed, min_rate, max_rate)
        features = list(configured)
    d = table.activations.shape[1]
    if not isinstance(features, (list, tuple)) or not features or not all(is_index(f) and 0 <= f < d for f in features):
        raise bad("features", features, f"'auto' or a non-empty list of feature indices in [0, {d - 1}]")
    out = []
    for f in features:
        c, s = table.best_concept(int(f), allowed)
        out.append(SelectedFeature(int(f), c, s, float(table.firing_rate[int(f)])))
    return out


def top_image_rows(table: FeatureTable, chosen: Sequence[SelectedFeature], n: int = 8) -> list[dict]:
    """Rows for :func:`equidiff.report.figures.sae_top_images`: each feature's ``n`` top-activating images
    (at most all of them), with their labels when the images carry labels, else their indices."""
    rows = []
    for s in chosen:
        idx, vals = table.top_activating(s.feature, min(n, len(table.images)))
        row = {"feature": s.feature, "concept": s.concept, "selectivity": s.selectivity,
               "firing_rate": s.firing_rate, "images": table.images[idx], "values": vals}
        row.update({"labels": table.labels[idx]} if table.labels is not None else {"indices": idx})
        rows.append(row)
    return rows
