"""Measures of invariant samples, and the metrics.json every notebook writes."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "to_jsonable",
    "write_metrics",
    "read_metrics",
    "l1_l2",
    "kl_divergence",
    "classifier_features",
    "frechet_distance",
    "feature_fid",
    "diversity",
    "FIDResult",
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


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples)."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


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


def to_jsonable(obj):
    """Convert tensors, arrays and numpy scalars into plain JSON types (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_metrics(output_dir, metrics: dict, name: str = "metrics.json") -> Path:
    """Write ``<output_dir>/metrics.json`` so the book, tests and readers can use the numbers."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(to_jsonable(metrics), indent=2))
    return path


def read_metrics(output_dir, name: str = "metrics.json") -> dict:
    return json.loads((Path(output_dir) / name).read_text())


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
