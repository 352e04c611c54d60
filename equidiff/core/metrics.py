"""Measures of invariant samples: L1/L2 to the target, KL, features, the Fréchet distance, diversity.

The metrics.json record the notebooks write lives in :mod:`equidiff.report.record`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = [
    "l1_l2",
    "kl_divergence",
    "classifier_features",
    "frechet_from_statistics",
    "frechet_distance",
    "feature_fid",
    "diversity",
    "nearest_by_objective",
    "FIDResult",
    "bootstrap_interval",
]


def l1_l2(measurements: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample L1 = Σ|L(x) − y*| and L2 = Σ(L(x) − y*)² (the loss of Algorithm 1): (B,), (B,)."""
    d = measurements - target.reshape(1, -1)
    return d.abs().sum(1), (d**2).sum(1)


def kl_divergence(p_target: torch.Tensor, p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """KL(p_target || p) per sample for probability vectors (B, K): (B,)."""
    pt = p_target.reshape(1, -1).clamp(min=eps)
    return (pt * (pt.log() - p.clamp(min=eps).log())).sum(1)


@torch.no_grad()
def classifier_features(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Penultimate (pooled, pre-logits) features of a timm classifier: (B, D)."""
    out = []
    for i in range(0, len(x), batch):
        f = model.forward_features(x[i : i + batch])
        out.append(model.forward_head(f, pre_logits=True))
    return torch.cat(out).double()


TRACE_ROOTS = ("sqrtm", "eigh")


def frechet_from_statistics(mu1, s1, mu2, s2, *, trace_root: str = "sqrtm") -> float:
    """Fréchet distance of N(mu1, s1) and N(mu2, s2): ||mu1 − mu2||² + tr(s1) + tr(s2) − 2 tr((s1 s2)^½).

    ``mu`` (D,), ``s`` (D, D). ``trace_root`` says how tr((s1 s2)^½) is computed:

    * ``"sqrtm"`` (default, the usual FID code): ``scipy.linalg.sqrtm(s1 @ s2)``, real part;
    * ``"eigh"``: Σ √λ_i(s1^½ s2 s1^½) from symmetric eigendecompositions (round-off negatives
      clipped to 0): real-valued and free of ``sqrtm``'s warnings when the covariances are
      singular (fewer samples than features, as for 32 samples in 2048 Inception features).

    Both compute the same quantity; they agree to round-off on well-conditioned covariances.
    """
    if trace_root not in TRACE_ROOTS:
        raise ValueError(f"trace_root must be one of {TRACE_ROOTS}, got {trace_root!r}")
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, dtype=np.float64)), np.atleast_2d(np.asarray(s2, dtype=np.float64))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    for name, v, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("s1", s1, (d, d)), ("s2", s2, (d, d))):
        if d < 1 or v.shape != shape:
            raise ValueError(f"{name} must have shape {shape if d >= 1 else '(D,)'} (mu: (D,), s: (D, D)), "
                             f"got {v.shape}")
    if trace_root == "sqrtm":
        from scipy import linalg

        tr_covmean = np.trace(np.real(linalg.sqrtm(s1 @ s2)))
    else:
        w, v = np.linalg.eigh((s1 + s1.T) / 2)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # s1^½
        m = root1 @ s2 @ root1
        lam = np.linalg.eigvalsh((m + m.T) / 2)
        tr_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    return frechet_from_statistics(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def feature_fid(model: torch.nn.Module, samples: torch.Tensor, real: torch.Tensor) -> float:
    """FID computed in the feature space of ``model`` (not Inception: label it so in figures)."""
    return frechet_distance(classifier_features(model, samples).cpu(), classifier_features(model, real).cpu())


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between samples' features."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if len(f) < 2:
        return float("nan")
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / (n * (n - 1)))


@torch.no_grad()
def nearest_by_objective(objective, images: torch.Tensor, target: torch.Tensor, k: int, *, batch: int = 512,
                         exclude: Optional[int] = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` of ``images`` (N, C, H, W) whose objective values lie nearest ``target`` in the Algorithm 1
    loss Σ(L(x) − y*)²: their indices (k,) and losses (k,), nearest first; ``exclude``: an index left out
    (the query itself). Real images ranked this way show how far real data is from sharing y*."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
    n_left = len(images) - (exclude is not None)
    if k > n_left:
        raise ValueError(f"k must be at most {n_left} (the images to rank), got {k}")
    t = target.float().reshape(1, -1).cpu()
    loss = torch.cat([l1_l2(objective(images[i : i + batch].to(device)).float().cpu(), t)[1]
                      for i in range(0, len(images), batch)])  # (N,)
    if exclude is not None:
        loss[exclude] = float("inf")
    loss, idx = torch.topk(loss, k, largest=False)
    return idx, loss


@dataclass
class FIDResult:
    """An FID, or why it could not be computed (``value`` None and ``reason`` set: no fallback)."""

    figure: str  # which figure this is, e.g. "Table 4.1 FID, neuron #1656"
    value: Optional[float]  # the FID, None when not computed
    reason: Optional[str] = None  # why it was not computed
    features: str = ""  # the feature space (model and layer)
    n_samples: int = 0
    n_reference: int = 0
    note: str = ""  # caveats, e.g. fewer samples than feature dimensions (a biased, rank-deficient estimate)

    @property
    def computed(self) -> bool:
        return self.value is not None

    def summary(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self):
        if self.computed:
            return f"{self.figure}: FID = {self.value:.2f} ({self.features}, {self.n_samples} vs {self.n_reference})"
        return f"{self.figure}: not computed — {self.reason}"


def bootstrap_interval(hits: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a 0/1 array (resampling members with replacement)."""
    hits = np.asarray(hits, dtype=float)
    if hits.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, hits.size, size=(n_boot, hits.size))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
