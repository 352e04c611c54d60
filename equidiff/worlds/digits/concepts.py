"""Concept labels of the digits world: the labelled data behind a unit's alignment r.

The thesis picks neurons by their *semantic alignment* from SemanticLens [Dreyer et al., 2025]
(Section 4.2.1, Appendix .5), which needs CLIP and ImageNet. The embedded digits world instead
labels its own images automatically (as Network Dissection labels a data set):

* the ten digit classes (``"digit 0"`` ... ``"digit 9"``), from the true labels;
* four stroke shapes measured on the thresholded image — ``closed loop`` (a background region not
  connected to the border, found with ``scipy.ndimage.label``), ``two loops``, ``horizontal bar``
  (a row with a long run of ink) and ``vertical stroke`` (a column with a long run of ink).

:func:`concept_labels` returns the (N, K) 0/1 matrix the chapters correlate units with (the neuron
chapter's channels, the SAE chapter's features).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from equidiff._validate import bad, check_images

__all__ = [
    "DIGIT_CONCEPTS",
    "STROKE_CONCEPTS",
    "CONCEPTS",
    "CONCEPT_SETS",
    "HOLE_INK",
    "RUN_INK",
    "BAR_RUN",
    "STROKE_RUN",
    "closed_loops",
    "longest_run",
    "concept_labels",
]

DIGIT_CONCEPTS = tuple(f"digit {d}" for d in range(10))
STROKE_CONCEPTS = ("closed loop", "two loops", "horizontal bar", "vertical stroke")
CONCEPTS = DIGIT_CONCEPTS + STROKE_CONCEPTS
CONCEPT_SETS = {"all": CONCEPTS, "digits": DIGIT_CONCEPTS, "strokes": STROKE_CONCEPTS}

# Thresholds of the stroke concepts, on images in [-1, 1] (background -1, ink +1).
HOLE_INK = -0.25  # a pixel is ink for the loop test if its value is > -0.25 (intensity > 0.375)
RUN_INK = 0.0  # a pixel is ink for the bar / stroke tests if its value is > 0 (intensity > 0.5)
BAR_RUN = 10  # horizontal bar: some row holds ≥ 10 consecutive ink pixels (of 16)
STROKE_RUN = 14  # vertical stroke: some column holds ≥ 14 consecutive ink pixels (of 16)


def closed_loops(image: np.ndarray, threshold: float = HOLE_INK) -> int:
    """Number of holes of one (H, W) image: background regions not connected to the border.

    Background is labelled with 4-connectivity (``scipy.ndimage.label``'s default), the
    topologically consistent partner of 8-connected ink: a diagonal gap in a stroke does not open
    a loop.
    """
    bg = np.asarray(image) <= threshold  # (H, W) background pixels
    lab, n = ndimage.label(bg)
    border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))) - {0}
    return int(sum(1 for i in range(1, n + 1) if i not in border))


def longest_run(mask: np.ndarray, axis: int) -> int:
    """Longest run of consecutive True values along ``axis`` (1: within rows, 0: within columns)."""
    m = np.asarray(mask, dtype=bool)
    if axis == 0:
        m = m.T
    best = 0
    for row in m:
        cur = 0
        for v in row:
            cur = cur + 1 if v else 0
            best = max(best, cur)
    return best


def concept_labels(images: torch.Tensor, labels=None) -> tuple[np.ndarray, list[str]]:
    """Binary concept matrix of the images: ``(N, n_concepts)`` bool, and the concept names.

    With ``labels`` (N,) the ten digit classes come first (``"digit 0"`` ... ``"digit 9"``), then
    the stroke concepts of :data:`STROKE_CONCEPTS`; without labels only the stroke concepts.
    """
    images = check_images(images)  # grey (N, 1, H, W)
    x = images[:, 0].detach().cpu().numpy()  # (N, H, W)
    holes = np.array([closed_loops(im) for im in x])
    ink = x > RUN_INK
    hrun = np.array([longest_run(m, axis=1) for m in ink])
    vrun = np.array([longest_run(m, axis=0) for m in ink])
    strokes = np.stack([holes >= 1, holes >= 2, hrun >= BAR_RUN, vrun >= STROKE_RUN], 1)
    if labels is None:
        return strokes, list(STROKE_CONCEPTS)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if len(y) != len(x):
        raise bad("labels", f"{len(y)} labels", f"one label per image ({len(x)})")
    digits = y[:, None] == np.arange(10)[None, :]
    return np.concatenate([digits, strokes], 1), list(CONCEPTS)
