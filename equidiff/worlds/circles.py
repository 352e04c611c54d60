"""The 2D concentric-circles world of thesis Figure 3.1, with exact level sets as ground truth.

* Data (Fig. 3.1a): 1,500 points uniform in [-2, 2]², each labelled by its position relative
  to the unit circle (inner: |x| < 1).
* Classifier (Fig. 3.1b): a 3-layer MLP trained deterministically with an L2 weight penalty
  (so its probability is never exactly 0 or 1 in float32 and the logit keeps a useful gradient).
* Invariant sets (Fig. 3.1c-e): :func:`equidiff.find_invariants` on the MLP's logit from many
  random starts, compared with the exact level curve f(x) = p traced by marching squares
  (contourpy) on a dense grid; **coverage** = share of the curve's length within 0.05 of a point.
* EquiDiff in miniature: a small MLP denoiser trained with diffusers' DDPM scheduler on a
  shaped 2D "data manifold" (scikit-learn's two moons), sampled with the deterministic DDIM
  map z_T -> x, used as the prior of ``find_invariants``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from equidiff import cache
from equidiff.core.invariants import InvariantConfig, InvariantResult, find_invariants
from equidiff.core.objectives import class_logit
from equidiff.core.priors import DDIMChain, IdentityPrior

__all__ = [
    "CirclesConfig",
    "circles_data",
    "CircleMLP",
    "train_classifier",
    "load_classifier",
    "model_folders",
    "probability_of",
    "level_curves",
    "coverage",
    "best_coverage",
    "invariants_2d",
    "tau_for_probability",
    "ToyPriorConfig",
    "ToyDenoiser",
    "ToyDDIMPrior",
    "manifold_data",
    "load_prior",
    "BOX",
]

BOX = 2.5  # the plane shown and searched: [-BOX, BOX]²
_VERSION = "1"


def check_point(name: str, p) -> list[float]:
    try:
        a = [float(v) for v in p]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a point [x, y], got {p!r}")
    if len(a) != 2 or not all(math.isfinite(v) for v in a):
        raise ValueError(f"{name} must be a point [x, y] of two finite numbers, got {p!r}")
    if max(abs(v) for v in a) > BOX:
        raise ValueError(f"{name} must lie in the plane shown, [-{BOX}, {BOX}]², got {p!r}")
    return a


# --------------------------------------------------------------------------- data + classifier


@dataclass(frozen=True)
class CirclesConfig:
    n_train: int = 1500  # training points (thesis Fig. 3.1a: 1,500)
    n_test: int = 1000  # held-out test points
    extent: float = 2.0  # points are uniform in [-extent, extent]²
    hidden: int = 32  # width of the two hidden layers of the 3-layer MLP
    epochs: int = 1500  # full-batch Adam steps
    lr: float = 0.01  # Adam learning rate
    weight_decay: float = 0.01  # L2 penalty: a smooth logit, so p(x) stays strictly inside (0, 1)
    seed: int = 0  # data and initialisation seed

    def __post_init__(self):
        for f in ("n_train", "n_test", "hidden", "epochs"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{f} must be an integer ≥ 1, got {v!r}")
        for f in ("extent", "lr", "weight_decay"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{f} must be a finite number ≥ 0, got {v!r}")
        if not 1.0 < self.extent <= BOX:
            raise ValueError(f"extent must be in (1, {BOX}] so both classes appear, got {self.extent!r}")


def circles_data(n: int, extent: float = 2.0, seed: int = 0):
    """(points (n, 2) uniform in [-extent, extent]², labels (n,) with 1 = inside the unit circle)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand((n, 2), generator=gen) * 2 - 1) * extent
    y = (x.norm(dim=1) < 1.0).float()
    return x, y


class CircleMLP(nn.Module):
    """3-layer MLP 2 -> hidden -> hidden -> 1 (logit of 'inner')."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2) -> (B, 1)
        return self.net(x)


def train_classifier(cfg: CirclesConfig = CirclesConfig()) -> tuple[CircleMLP, dict]:
    """Train the MLP deterministically; returns (model, {"test_accuracy", "train_seconds"})."""
    t0 = time.perf_counter()
    x, y = circles_data(cfg.n_train, cfg.extent, cfg.seed)
    xt, yt = circles_data(cfg.n_test, cfg.extent, cfg.seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = CircleMLP(cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(cfg.epochs):  # full batch: no sampling randomness
        opt.zero_grad()
        loss_fn(model(x).squeeze(1), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float(((model(xt).squeeze(1) > 0).float() == yt).float().mean())
    return model, {"test_accuracy": acc, "train_seconds": time.perf_counter() - t0}


def load_classifier(cfg: CirclesConfig = CirclesConfig(), cache_dir=None) -> tuple[CircleMLP, dict]:
    """The cached classifier for ``cfg`` (trained and cached on first use)."""
    return cache.load_or_train("circles-mlp", cfg, _VERSION, CircleMLP(cfg.hidden),
                               lambda: train_classifier(cfg), cache_dir)


def model_folders(cache_dir=None) -> dict:
    """The folders of the chapter's two models at their default configs: ``{"circles_mlp": ..., "toy_ddpm": ...}``
    (``(folder, config)`` pairs), for the shipped models' cards."""
    return {"circles_mlp": (cache.model_dir("circles-mlp", CirclesConfig(), _VERSION, cache_dir), CirclesConfig()),
            "toy_ddpm": (cache.model_dir("toy-ddpm", ToyPriorConfig(), _VERSION, cache_dir), ToyPriorConfig())}


def probability_of(model: nn.Module, points) -> np.ndarray:
    """f(x) = sigmoid(logit) for an (n, 2) array."""
    with torch.no_grad():
        return torch.sigmoid(model(torch.as_tensor(points, dtype=torch.float32))).squeeze(1).numpy()


# --------------------------------------------------------------------------- ground truth


def level_curves(model: nn.Module, p: float, resolution: int = 400) -> list[np.ndarray]:
    """The exact level set {f(x) = p} in the box, by marching squares on a dense grid."""
    import contourpy

    g = np.linspace(-BOX, BOX, resolution, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    f = probability_of(model, np.stack([gx.ravel(), gy.ravel()], 1)).reshape(gx.shape)
    lines = contourpy.contour_generator(gx, gy, f.astype(np.float64), line_type="Separate").lines(float(p))
    return [np.asarray(l) for l in lines if len(l) >= 2]


def _resample(curves: list[np.ndarray], spacing: float = 0.005):
    pts, weights = [], []
    for c in curves:
        seg = np.diff(c, axis=0)
        lengths = np.linalg.norm(seg, axis=1)
        for a, s, L in zip(c[:-1], seg, lengths):
            k = max(1, int(math.ceil(L / spacing)))
            t = (np.arange(k) + 0.5) / k
            pts.append(a + t[:, None] * s)
            weights.append(np.full(k, L / k))
    if not pts:
        return np.zeros((0, 2)), np.zeros(0)
    return np.concatenate(pts), np.concatenate(weights)


def coverage(points, curves: list[np.ndarray], radius: float = 0.05) -> float:
    """Share of the curves' total length lying within ``radius`` of some point."""
    from scipy.spatial import cKDTree

    samples, w = _resample(curves)
    if len(samples) == 0:
        raise ValueError("the level set is empty inside the box; coverage is undefined")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return 0.0
    d, _ = cKDTree(points).query(samples)
    return float(w[d <= radius].sum() / w.sum())


def best_coverage(curves: list[np.ndarray], k: int, radius: float = 0.05) -> float:
    """Coverage of k points spaced equally along the curves' length (the best k points can do)."""
    samples, w = _resample(curves)
    s = np.cumsum(w) - w / 2
    targets = (np.arange(k) + 0.5) / k * w.sum()
    idx = np.clip(np.searchsorted(s, targets), 0, len(samples) - 1)
    return coverage(samples[idx], curves, radius)


# --------------------------------------------------------------------------- invariant sets


def tau_for_probability(tau_p: float) -> float:
    """Loss threshold on the squared logit that guarantees |f(x) − p| < tau_p.

    The sigmoid has slope ≤ 1/4, so |Δlogit| < 4·tau_p implies |Δp| < tau_p; the loss is
    Δlogit², so τ = (4·tau_p)².
    """
    if not isinstance(tau_p, (int, float)) or not (0 < tau_p < 1):
        raise ValueError(f"tau must be a probability tolerance in (0, 1), got {tau_p!r}")
    return (4.0 * tau_p) ** 2


def invariants_2d(
    model: nn.Module,
    query,
    n: int = 512,
    tau: float = 0.005,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    repulsion: float = 0.0,
    prior=None,
    keep_norm: bool = False,
    optimizer: str = "adam",
) -> InvariantResult:
    """Invariant set of ``query`` under the MLP: points whose probability is within ``tau`` of p.

    The logit is optimised (not the probability, whose gradient vanishes far from the boundary),
    from ``n`` starts drawn uniformly in the box (or z_T ~ N(0, I) through ``prior``).
    """
    q = torch.tensor([check_point("query", query)])  # (1, 2)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer ≥ 1, got {n!r}")
    if prior is None:
        prior = IdentityPrior((2,), init="uniform", low=-BOX, high=BOX)
    cfg = InvariantConfig(
        n_samples=n,
        steps=steps,
        tau=tau_for_probability(tau),
        optimizer=optimizer,
        lr=lr,
        seed=seed,
        repulsion=float(repulsion),
        repulsion_scale=0.15,
        keep_norm=keep_norm,
    )
    return find_invariants(class_logit(model, 0, name="circle MLP"), q, prior, cfg)


# --------------------------------------------------------------------------- EquiDiff in miniature


@dataclass(frozen=True)
class ToyPriorConfig:
    n_data: int = 4000  # points of the 2D data manifold (two moons)
    noise: float = 0.05  # make_moons noise
    hidden: int = 128  # denoiser width
    train_steps: int = 4000  # Adam steps
    batch: int = 512  # batch size
    lr: float = 2e-3  # Adam learning rate
    num_train_timesteps: int = 200  # DDPM training timesteps
    seed: int = 0  # data, init and noise seed

    def __post_init__(self):
        for f in ("n_data", "hidden", "train_steps", "batch", "num_train_timesteps"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be an integer ≥ 1, got {v!r}")


def manifold_data(cfg: ToyPriorConfig = ToyPriorConfig()) -> torch.Tensor:
    """Two moons, centred and scaled to span the circles' plane: (n, 2)."""
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=cfg.n_data, noise=cfg.noise, random_state=cfg.seed)
    x = (x - np.array([0.5, 0.25])) * np.array([1.2, 1.6])
    return torch.from_numpy(x.astype(np.float32))


class ToyDenoiser(nn.Module):
    """ε-prediction MLP for 2D points, conditioned on a sinusoidal timestep embedding."""

    def __init__(self, hidden: int = 128, t_dim: int = 32):
        super().__init__()
        self.t_dim = t_dim
        self.net = nn.Sequential(
            nn.Linear(2 + t_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # (B, 2), (B,) -> (B, 2)
        from diffusers.models.embeddings import get_timestep_embedding

        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        emb = get_timestep_embedding(t, self.t_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.net(torch.cat([x, emb.to(x.dtype)], dim=1))


def _ddpm_scheduler(cfg: ToyPriorConfig):
    from diffusers import DDPMScheduler

    # 2D data extend beyond [-1, 1]: no clipping of the predicted x0.
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         clip_sample=False)


def train_prior(cfg: ToyPriorConfig = ToyPriorConfig(), progress: bool = False):
    """Train the 2D denoiser with diffusers' DDPM noise schedule, deterministically."""
    from tqdm import tqdm  # text bar: tqdm.auto wants ipywidgets in a notebook and warns without it

    data = manifold_data(cfg)
    sched = _ddpm_scheduler(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = ToyDenoiser(cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    for _ in tqdm(range(cfg.train_steps), disable=not progress, desc="training 2D prior"):
        i = torch.randint(0, len(data), (cfg.batch,), generator=gen)
        x0 = data[i]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch,), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        loss = ((model(xt, t) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, {"train_seconds": time.perf_counter() - t0, "final_loss": float(loss.detach())}


class ToyDDIMPrior(DDIMChain):
    """Deterministic DDIM map z_T -> x (η = 0) over the 2D denoiser.

    The same machinery as :class:`equidiff.core.priors.PixelDDIMPrior` (diffusers' DDIMScheduler
    built from the training scheduler's config, visible step loop), with 2D points for latents
    and no clamping (the plane extends beyond [-1, 1]).
    """

    def __init__(self, model: ToyDenoiser, cfg: ToyPriorConfig = ToyPriorConfig(), num_steps: int = 20,
                 checkpointing: bool = False):
        self.model = model.eval().requires_grad_(False)
        self._setup(_ddpm_scheduler(cfg), num_steps, checkpointing, clamp=False)

    @property
    def latent_shape(self) -> tuple:
        return (2,)

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _step(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.model(x, t)  # (B, 2) predicted noise
        return self.scheduler.step(eps, t, x, eta=0.0).prev_sample  # (B, 2)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        x = self._check_latents(z)  # (B, 2) Algorithm 1, line 9: x_T = z_T
        self.scheduler.set_timesteps(self.num_steps)
        for t in self.scheduler.timesteps:  # lines 10-13: denoising loop
            x = self._run(self._step, x, t)
        return self.finish(x)


def load_prior(cfg: ToyPriorConfig = ToyPriorConfig(), cache_dir=None, progress: bool = False):
    """The cached 2D denoiser for ``cfg`` (trained and cached on first use)."""
    return cache.load_or_train("toy-ddpm", cfg, _VERSION, ToyDenoiser(cfg.hidden),
                               lambda: train_prior(cfg, progress=progress), cache_dir)


def typical_norm(dim: int = 2) -> float:
    """E|z| for z ~ N(0, I_dim): √2 Γ((d+1)/2) / Γ(d/2)."""
    return math.sqrt(2) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))
