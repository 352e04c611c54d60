"""Your own classifier: EquiDiff on a pretrained classifier this project did not train.

The model is ``ccexam``'s MNIST CNN (``ccexam.models.MNISTNet``, MIT licence): its weights ship inside
the wheel (``ccexam/weights/mnist.pth``, a plain state dict saved on a GPU, loaded here on the CPU with
``weights_only=True``) and it reads 28×28 grey digits in [0, 1] normalised with mean 0.1307 and std
0.3081 (:data:`CCEXAM`). The digits world's prior makes 16×16 images in [-1, 1] — the centre 24×24 of
MNIST's 28×28 frame, downsampled (:mod:`equidiff.worlds.digits.data`) — so the chapter wraps the model
once (:func:`equidiff.core.wrap.wrap_model`) with one of two fits (:data:`FITS`): ``"pad"`` resamples the
16×16 image to 24×24 and pads 2 px of background back on each side (the inverse of the world's crop),
``"stretch"`` resamples it to 28×28. :func:`conversion_accuracy` measures ccexam's accuracy on the
world's held-out digits under each.

Then, for one query digit of the held-out split (:func:`load_query`), it samples two invariant sets with
the world's prior (Algorithm 1, :func:`run_members`): the query's **class probability** under ccexam
(measured as its log, :func:`class_log_probability`: the same level sets as p_y, without the vanishing
gradient of a saturated softmax) and **one channel** of a convolution layer (:func:`channel_objective`:
the channel's spatial mean, read before its ReLU, in units of its spread over real digits). The world's
own digits classifier — the judge — labels the members (:func:`judge_members`): the share it reads as
the query's class is what the chapter reports of ccexam.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from equidiff._validate import bad, check_bool, check_choice, check_folder, check_int, check_num
from equidiff.core.batched import find_invariants_batched
from equidiff.core.invariants import InvariantConfig
from equidiff.core.objectives import Objective, capture_activation
from equidiff.core.wrap import INTERPOLATIONS, WrappedModel, layer_channel, wrap_model
from equidiff.report.tables import html_table
from equidiff.worlds.digits.ship import CONFIDENT

__all__ = ["NOTEBOOK", "CONFIDENT", "CCEXAM", "FITS", "PROFILES", "MEASURES", "REDUCES", "ccexam_weights", "ccexam_layers",
           "load_ccexam", "wrap_ccexam", "model_view", "conversion_accuracy", "accuracy_table", "Settings",
           "check_parameters", "Query", "load_query", "class_log_probability", "class_objective", "ChannelChoice",
           "pick_channel", "channel_objective", "run_members", "judge_members", "chapter_metrics"]

NOTEBOOK = "06_own_classifier"
# ccexam's input convention for MNISTNet (its training transform): 28×28 grey, [0, 1], normalised
CCEXAM = dict(input_size=(28, 28), channels=1, value_range=(0.0, 1.0), mean=0.1307, std=0.3081)
# how the world's 16×16 images reach 28×28
FITS = {
    "pad": dict(resize="pad", pad=2),  # resample to 24×24, pad 2 px of background: the inverse of the world's crop
    "stretch": dict(resize="stretch"),  # resample to 28×28: the digit fills the frame
}
PROFILES = ("cpu", "smoke")  # the digits worlds: ccexam reads handwritten digits
MEASURES = ("log", "probability")  # the class constraint measured as log p_y (default) or p_y itself
REDUCES = ("mean", "map")  # a channel's spatial mean (one number) or its whole map


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def ccexam_weights() -> Path:
    """The weights file inside the installed ccexam wheel (ValueError naming it when ccexam lacks it)."""
    import importlib.util

    spec = importlib.util.find_spec("ccexam")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("ccexam is not installed; it is pinned in pyproject.toml (pip install -e .)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mnist.pth"
    if not path.is_file():
        raise ValueError(f"ccexam's weights {path} are missing; reinstall the pinned ccexam wheel")
    return path


def ccexam_layers() -> dict[str, int]:
    """MNISTNet's convolution layers and their channels, ``{"features.0": 32, "features.3": 64}`` (no weights read)."""
    from ccexam.models import MNISTNet

    net = MNISTNet(CCEXAM["input_size"][0])
    return {n: m.out_channels for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}


def load_ccexam() -> tuple[torch.nn.Module, dict]:
    """ccexam's pretrained MNISTNet on the CPU, in eval mode, frozen; and a record of what was loaded."""
    from importlib.metadata import version

    from ccexam.models import MNISTNet

    path = ccexam_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)  # saved on cuda:0; a plain state dict
    net = MNISTNet(CCEXAM["input_size"][0])
    net.load_state_dict(state, strict=True)
    net.eval().requires_grad_(False)
    info = {"package": "ccexam", "version": version("ccexam"), "class": "ccexam.models.MNISTNet",
            "weights": "ccexam/weights/mnist.pth", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "convention": {k: list(v) if isinstance(v, tuple) else v for k, v in CCEXAM.items()}}
    return net, info


def wrap_ccexam(net: torch.nn.Module, fit: str, interpolation: str, source_size) -> WrappedModel:
    """ccexam's model taking the world's images (``source_size``: their (H, W)), with fit ``fit`` (:data:`FITS`)."""
    check_choice("fit", fit, tuple(FITS))
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    return wrap_model(net, **CCEXAM, **FITS[fit], interpolation=interpolation, source_range=(-1.0, 1.0),
                      source_size=tuple(source_size), name="ccexam MNISTNet")


def model_view(wrapped: WrappedModel, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the model receives it, before its normalisation, mapped to [-1, 1] for display: (B, C, 28, 28)."""
    c = wrapped.convention
    mean = torch.tensor(c.mean).view(1, -1, 1, 1)
    std = torch.tensor(c.std).view(1, -1, 1, 1)
    with torch.no_grad():
        v = wrapped.convert(x.cpu()) * std + mean  # value_range units
    lo, hi = c.value_range
    return (v - lo) / (hi - lo) * 2 - 1


def conversion_accuracy(net, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """ccexam's top-1 accuracy on ``images`` (N, 1, H, W) in [-1, 1] under every fit and interpolation:
    ``{fit: {interpolation: accuracy}}``."""
    out = {}
    for fit in FITS:
        out[fit] = {}
        for interp in ("bilinear", "bicubic"):
            w = wrap_ccexam(net, fit, interp, images.shape[-2:])
            with torch.no_grad():
                pred = torch.cat([w(images[i: i + 500]).argmax(1) for i in range(0, len(images), 500)])
            out[fit][interp] = float((pred == labels).float().mean())
    return out


def accuracy_table(acc: dict, n: int, what: str) -> str:
    """:func:`conversion_accuracy` as an HTML table (one row per fit, one column per interpolation)."""
    interps = list(next(iter(acc.values())))
    h, w = CCEXAM["input_size"]

    def how(fit):
        p = FITS[fit].get("pad", 0)
        return f"{fit}: resample to {h - 2 * p}×{w - 2 * p}" + (f", pad {p} px to {h}×{w}" if p else "")

    rows = [[how(fit)] + [f"{acc[fit][i]:.3f}" for i in interps] for fit in acc]
    return html_table(["fit"] + interps, rows, note=f"top-1 accuracy of ccexam's MNISTNet on the {n} {what}, "
                                                    "converted from 16×16 in [-1, 1]")


# --------------------------------------------------------------------------------------------
# The chapter's parameters
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Algorithm 1's settings for both runs (checked by :class:`~equidiff.core.invariants.InvariantConfig`)."""

    n_samples: int = 16  # ≥ 2: samples per run
    steps: int = 80  # ≥ 0: step budget B per sample
    ddim_steps: int = 10  # ≥ 1: DDIM steps T of the prior
    tau: float = 0.01  # > 0: loss threshold τ (in the objective's units: log p_y, or channel spreads)
    optimizer: str = "adam"  # Algorithm 1's optimiser
    lr: float = 0.3  # > 0: its learning rate
    keep_norm: bool = True  # keep each z_T at its drawn norm
    lowpass_cutoff: Optional[float] = 0.5  # cutoff of the low-pass term F; None: no filtered term
    seed: int = 0  # ≥ 0: seed of the starting noise (the same for both runs)

    def __post_init__(self):
        check_int("n_samples", self.n_samples, 2, why="samples per run")
        check_int("ddim_steps", self.ddim_steps, 1, why="DDIM steps T of the prior")
        self.config()  # steps, tau, optimizer, lr, keep_norm, lowpass_cutoff, seed: Algorithm 1's own checks

    def config(self) -> InvariantConfig:
        return InvariantConfig(n_samples=self.n_samples, steps=self.steps, tau=self.tau, optimizer=self.optimizer,
                               lr=self.lr, keep_norm=self.keep_norm, lowpass_cutoff=self.lowpass_cutoff,
                               seed=self.seed)


def check_parameters(p: dict) -> None:
    """The notebook's parameters (``notebooks/06_own_classifier.ipynb``), each checked by its own name before any
    world or weights are loaded (``query_index``'s range: :func:`load_query`)."""
    check_choice("profile", p["profile"], PROFILES, why="the digits worlds: ccexam's model reads handwritten digits")
    check_int("query_index", p["query_index"], 0, why="one of the world's held-out digits")
    check_choice("fit", p["fit"], tuple(FITS))
    check_choice("interpolation", p["interpolation"], ("bilinear", "bicubic"))
    check_choice("measure", p["measure"], MEASURES)
    layers = ccexam_layers()
    check_choice("layer", p["layer"], tuple(layers), why="MNISTNet's convolution layers")
    check_int("channel", p["channel"], 0, layers[p["layer"]] - 1, none=True,
              why=f"None: the channel the query excites most; layer {p['layer']!r} has {layers[p['layer']]} channels")
    check_choice("reduce", p["reduce"], REDUCES)
    check_bool("keep_norm", p["keep_norm"])
    check_num("lowpass_cutoff", p["lowpass_cutoff"], 0, 1, lo_open=True, hi_open=True, none=True,
              why="a fraction of Nyquist")
    Settings(**{f.name: p[f.name] for f in dataclasses.fields(Settings)})
    check_folder("output_dir", p["output_dir"])


# --------------------------------------------------------------------------------------------
# Query and objectives
# --------------------------------------------------------------------------------------------


@dataclass
class Query:
    """The query x*: one held-out digit, its label, ccexam's and the judge's reading of it."""

    index: int  # index in the world's held-out digits
    image: torch.Tensor  # (1, 1, H, W) in [-1, 1]
    label: int  # its true class
    model_probs: torch.Tensor  # (K,) ccexam's p(x*)
    judge_probs: torch.Tensor  # (K,) the judge's p(x*)

    @property
    def model_p(self) -> float:
        return float(self.model_probs[self.label])

    def describe(self) -> str:
        return (f"query #{self.index}, a '{self.label}': ccexam p = {self.model_p:.4f} "
                f"(predicts '{int(self.model_probs.argmax())}'), judge predicts '{int(self.judge_probs.argmax())}'")


def load_query(world, wrapped: WrappedModel, index: int) -> Query:
    """Held-out digit ``index`` of ``world`` with ccexam's and the judge's output distributions."""
    world.require("test_images", "query_index")
    world.require("judge", "the chapter (it labels the members)")
    n = len(world.test_images)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        raise bad("query_index", index, f"an integer in [0, {n - 1}] (the {n} held-out {world.image_noun})")
    x = world.test_images[index: index + 1].to(world.device)  # (1, 1, H, W)
    with torch.no_grad():
        pm = torch.softmax(wrapped(x), 1)[0]
        pj = torch.softmax(world.judge(x), 1)[0]
    return Query(index, x, int(world.test_labels[index]), pm, pj)


def class_log_probability(model: torch.nn.Module, index: int, name: Optional[str] = None) -> Objective:
    """log p_index(x), (B, 1): the level sets of the class probability, measured without its saturation (near
    p = 1 the softmax's gradient vanishes; log_softmax's does not)."""
    return Objective(lambda x: torch.log_softmax(model(x), dim=1)[:, index: index + 1],
                     f"log p(class {index}) of {name or type(model).__name__}", model)


def class_objective(wrapped: WrappedModel, label: int, measure: str) -> Objective:
    """The class constraint: log p_y (``"log"``) or p_y (``"probability"``, the existing factory)."""
    from equidiff.core.objectives import class_probability

    if measure == "log":
        return class_log_probability(wrapped, label, name=wrapped.name)
    return class_probability(wrapped, label, name=wrapped.name)


@dataclass
class ChannelChoice:
    """The channel the chapter samples and the scale its objective is measured in."""

    layer: str
    channel: int
    picked: bool  # True: chosen as the channel the query excites most (channel=None)
    zscore: float  # (a(x*) − mean over real digits) / spread
    spread: float  # std of the channel's mean activation over the held-out digits
    query_value: float  # a(x*), the channel's spatial mean on the query


def _channel_means(wrapped: WrappedModel, layer: str, x: torch.Tensor) -> torch.Tensor:
    module = dict(wrapped.model.named_modules())[layer]
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 500):
            with capture_activation(module) as store:
                wrapped(x[i: i + 500])
            out.append(store["output"].mean((2, 3)))  # (b, C): read before the ReLU (wrap.inplace_off)
    return torch.cat(out)  # (N, C)


def pick_channel(world, wrapped: WrappedModel, layer: str, query: Query, channel: Optional[int] = None) -> ChannelChoice:
    """``channel`` of ``layer`` (None: the one whose mean activation on the query lies most standard deviations
    above its mean over the world's held-out digits) and its spread there."""
    real = _channel_means(wrapped, layer, world.test_images.to(world.device))  # (N, C)
    q = _channel_means(wrapped, layer, query.image)[0]  # (C,)
    mu, sd = real.mean(0), real.std(0).clamp_min(1e-8)
    z = (q - mu) / sd
    c = int(z.argmax()) if channel is None else int(channel)
    return ChannelChoice(layer, c, channel is None, float(z[c]), float(sd[c]), float(q[c]))


def channel_objective(wrapped: WrappedModel, choice: ChannelChoice, reduce: str = "mean") -> Objective:
    """The channel's mean (or map), divided by its spread over real digits: τ is then in squared spreads."""
    base = layer_channel(wrapped, choice.layer, choice.channel, reduce=reduce, read="output", name=wrapped.name)
    return Objective(lambda x: base(x) / choice.spread, f"{base.description} / its spread over real digits", wrapped)


# --------------------------------------------------------------------------------------------
# Runs and what the judge says of them
# --------------------------------------------------------------------------------------------


def run_members(world, objective: Objective, query: Query, settings: Settings):
    """Algorithm 1 with the world's ``ddim_steps``-step DDIM prior (outputs clamped to [-1, 1])."""
    prior = world.make_prior(settings.ddim_steps, clamp=True)
    res = find_invariants_batched(objective, query.image, prior, settings.config(), world.batch_size)
    with torch.no_grad():
        start = prior(res.z_init.to(world.device)).clamp(-1, 1)  # the unoptimised images of the same noise
    return res, start


def _rate(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else math.nan


def judge_members(world, wrapped: WrappedModel, objective: Objective, query: Query, res, start: torch.Tensor) -> dict:
    """What the judge and the model say of one run: success at τ, L2, labels, agreement; ``members`` are the
    samples that reached τ (converged); the others are left out of the agreement. ``judge_other_counts``: members
    the judge reads as another class, ``judge_other_unsure_counts`` those of them it labels with a confidence below
    :data:`CONFIDENT` (the world's threshold for "a recognisable digit"); ``samples``: the per-sample labels,
    confidences and convergence (for the grids and ``members.json``)."""
    x = res.x.clamp(-1, 1)
    with torch.no_grad():
        l2 = ((objective(x) - objective(query.image)) ** 2).sum(1)  # (N,) unfiltered term only
        pj = torch.softmax(world.judge(x), 1)
        pm = torch.softmax(wrapped(x), 1)
        j0 = world.judge(start).argmax(1)
        m0 = wrapped(start).argmax(1)
    jl, ml, member = pj.argmax(1), pm.argmax(1), res.converged.to(x.device)
    conf = pj.max(1).values  # (N,) the judge's confidence in its own label
    y = query.label
    other = member & (jl != y)
    return {
        "objective": objective.description, "n": int(len(x)), "n_members": int(member.sum()),
        "success_rate": float(res.success_rate), "l2_mean": float(l2.mean()), "l2_median": float(l2.median()),
        "l2_members_mean": float(l2[member].mean()) if member.any() else math.nan,
        "judge_agreement": _rate(jl[member] == y),  # members the judge reads as the query's class
        "model_agreement": _rate(ml[member] == y),  # members ccexam itself reads as the query's class
        "judge_model_agreement": _rate(jl[member] == ml[member]),  # members both label alike
        "model_p_members_min": float(pm[member, y].min()) if member.any() else math.nan,
        "judge_p_members_mean": float(pj[member, y].mean()) if member.any() else math.nan,
        "judge_label_counts": torch.bincount(jl[member].cpu(), minlength=pj.shape[1]).tolist(),  # (K,) over members
        # the judge was trained to be unsure on non-digits: below CONFIDENT it does not see a digit
        "judge_other_counts": int(other.sum()), "judge_other_unsure_counts": int((other & (conf < CONFIDENT)).sum()),
        "judge_unsure_counts": int((member & (conf < CONFIDENT)).sum()), "confident": CONFIDENT,
        "samples": {"judge_labels": jl.tolist(), "model_labels": ml.tolist(), "converged": res.converged.tolist(),
                    "judge_confidence": conf.tolist()},  # per sample: members.json and the grids, not metrics.json
        "start_judge_agreement": _rate(j0 == y), "start_model_agreement": _rate(m0 == y),
        "steps_median": float(res.steps_to_converge[res.converged].float().median()) if bool(res.converged.any())
        else math.nan,
        "seconds": float(res.seconds),
    }


def chapter_metrics(query: Query, choice: ChannelChoice, rows: dict, accuracy: dict, settings: Settings, *,
                    fit: str, interpolation: str, measure: str, reduce: str, model_info: dict, n_heldout: int) -> dict:
    """metrics.json: the headline figures (success rate, l2, judge agreement per run), the conversion's accuracy,
    the query, the channel and the settings (the per-sample lists of ``rows`` stay out: ``members.json``)."""
    return {
        "model": model_info,
        "fit": fit, "interpolation": interpolation, "measure": measure, "reduce": reduce,
        "accuracy": {"heldout_n": n_heldout, "by_fit": accuracy, "used": accuracy[fit][interpolation]},
        "query": {"index": query.index, "label": query.label, "model_p": query.model_p,
                  "judge_label": int(query.judge_probs.argmax())},
        "channel": dataclasses.asdict(choice),
        "runs": {k: {a: b for a, b in r.items() if a != "samples"} for k, r in rows.items()},
        "success_rate": {k: r["success_rate"] for k, r in rows.items()},
        "l2": {k: r["l2_mean"] for k, r in rows.items()},
        "judge_agreement": {k: r["judge_agreement"] for k, r in rows.items()},
        "settings": dataclasses.asdict(settings),
    }
