"""The applications chapter: a planted shortcut found through invariant sets, and choosing members.

The thesis motivates invariant sets with bias and shortcut ("Clever Hans") detection (Sections
1.1, 2.6) but leaves its Applications chapter empty, and names the "lack of an algorithm to pick
the most interesting members from the Invariant Set" as a limitation (Section 4.5.2). In the
planted-shortcut variant of the digits world (:mod:`equidiff.worlds.digits.shortcut`, loaded as
``world.part("shortcut", **plant)``) the right answer is known, so the method can be checked:

* :func:`detect` — invariant sets of a classifier's shortcut-class probability for marked
  queries of that class, each member checked for the marker and judged with the marker blanked;
  :meth:`Detection.summary` — the share of members that carry the marker while not depicting
  the class, with a bootstrap interval (:func:`equidiff.core.metrics.bootstrap_interval`);
  :func:`interval_reading` / :func:`verdict` — what the two invariant sets (shortcut vs control
  classifier) show; :func:`query_probabilities` — the queries' class probability under each classifier;
* :func:`selection_study` — the member selection on the shortcut classifier's invariant set, at
  several k and with each part of its score alone;
* :func:`circles_selection`, :func:`neuron_selection` — the member selection of
  :mod:`equidiff.core.members` in the circles world and on a neuron of the neuron chapter;
* :func:`check_parameters`, :func:`check_neuron` — the notebook's parameters, each checked by its own
  name at the chapter's entry (``neuron``'s range once the world is loaded).

What the chapter's prose says about the run is computed from these results by
:func:`equidiff.chapters.applications_prose.prose_values` and glued into the page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from safetensors.torch import save_file

from equidiff._validate import bad, check_choice, check_folder, check_int, check_num
from equidiff.chapters import circles as circles_chapter
from equidiff.chapters import neurons as eqn
from equidiff.core.invariants import InvariantConfig, find_invariants
from equidiff.core.members import evaluate_selection, member_pool, select_members
from equidiff.core.metrics import bootstrap_interval
from equidiff.core.objectives import class_probability
from equidiff.worlds import circles as toy
from equidiff.worlds import world_names
from equidiff.worlds.digits.shortcut import ShortcutModels, ShortcutWorld, has_marker, predict, remove_marker

__all__ = ["Detection", "detect", "interval_reading", "verdict", "query_probabilities", "save_detections",
           "selection_study", "circles_selection", "neuron_selection", "OPTIMIZERS", "SELECT_SPACES",
           "check_parameters", "check_neuron", "chapter_metrics"]

OPTIMIZERS = ("adam", "sgd", "lbfgs")
SELECT_SPACES = ("pixels", "classifier")


def check_parameters(p: dict) -> None:
    """The notebook's parameters (``notebooks/05_applications.ipynb``), each checked by its own name before any
    world is loaded or model trained; ``neuron``'s range by :func:`check_neuron` once the world is known."""
    check_choice("profile", p["profile"], tuple(world_names()))
    check_int("seed", p["seed"], 0)
    ShortcutWorld(shortcut_class=p["shortcut_class"], marker_rate=p["marker_rate"], other_rate=p["other_rate"],
                  marker_size=p["marker_size"])  # the planted shortcut's own checks, by the same names
    check_int("n_queries", p["n_queries"], 1, why="marked test images of the shortcut class")
    check_int("n_samples", p["n_samples"], 2, why="invariant samples per query and classifier")
    check_int("steps", p["steps"], 0, why="the step budget B")
    check_num("tau", p["tau"], 0, lo_open=True, why="the loss threshold τ")
    check_choice("optimizer", p["optimizer"], OPTIMIZERS)
    check_num("lr", p["lr"], 0, lo_open=True)
    check_num("lowpass_cutoff", p["lowpass_cutoff"], 0, 1, lo_open=True, hi_open=True, why="a fraction of Nyquist")
    check_int("ddim_steps", p["ddim_steps"], 1, why="DDIM steps T of the prior")
    check_int("k", p["k"], 1, why="members to choose")
    check_num("novelty_weight", p["novelty_weight"], 0, 1)
    check_choice("select_space", p["select_space"], SELECT_SPACES)
    check_int("neuron", p["neuron"], 0, why="a channel of the neuron chapter's layer")
    check_int("neuron_samples", p["neuron_samples"], 2)
    check_int("neuron_steps", p["neuron_steps"], 0, why="the L-BFGS step budget")
    toy.check_point("circle_query", p["circle_query"])
    check_folder("output_dir", p["output_dir"])


def check_neuron(world, neuron: int) -> int:
    """``neuron`` if it is a channel of ``world.neuron_layer``; else ``ValueError`` naming ``neuron``."""
    n = eqn.n_channels(world)
    if not (0 <= neuron < n):
        raise bad("neuron", neuron, f"an integer in [0, {n - 1}] (channels of {world.neuron_layer})")
    return neuron


@dataclass
class Detection:
    """Invariant samples of one classifier's class probability, and what they show."""

    name: str  # "shortcut" or "control"
    x: torch.Tensor  # (N, 1, 16, 16) all samples (clamped to [-1, 1])
    converged: torch.Tensor  # (N,) bool: member of the invariant set at τ
    marked: torch.Tensor  # (N,) bool: carries the marker
    judged: torch.Tensor  # (N,) judge's class on the marker-blanked image
    query_of: torch.Tensor  # (N,) which query each sample belongs to
    loss: torch.Tensor  # (N,) final loss
    seconds: float

    @property
    def hits(self) -> torch.Tensor:
        """(N,) bool: a member that carries the marker while not depicting the shortcut class."""
        return self.converged & self.marked & (self.judged != self.shortcut_class)

    shortcut_class: int = 3

    def summary(self, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
        """Counts and shares over the members; ``interval``: the ``level`` bootstrap interval of ``share``
        (``n_boot`` resamplings of the members); shares are NaN when there is no member."""
        members = self.converged.numpy()
        h = self.hits.numpy()[members]
        lo, hi = bootstrap_interval(h, n_boot, level=level, seed=seed)
        return {
            "n_samples": int(len(self.converged)),
            "n_members": int(members.sum()),
            "n_hits": int(h.sum()),
            "success_rate": float(members.mean()),
            "marked_share": float(self.marked.numpy()[members].mean()) if members.any() else float("nan"),
            "judged_class_share": float((self.judged.numpy()[members] == self.shortcut_class).mean())
            if members.any() else float("nan"),
            "share": float(h.mean()) if h.size else float("nan"),
            "interval": [lo, hi],
            "level": float(level),
            "n_boot": int(n_boot),
            "seconds": self.seconds,
        }


def detect(classifier, models: ShortcutModels, queries: torch.Tensor, *, name: str, n_samples: int = 32,
           steps: int = 150, tau: float = 0.01, optimizer: str = "adam", lr: float = 0.3,
           lowpass_cutoff: Optional[float] = 0.5, ddim_steps: int = 10, seed: int = 0) -> Detection:
    """Sample the invariant set of ``classifier``'s shortcut-class probability for each query.

    Algorithm 1 as in the classifier chapter (``optimizer`` at ``lr``, |z_T| kept at its drawn
    size, dual loss with the low-pass term) through a ``ddim_steps``-step DDIM chain over the
    marked world's prior; ``n_samples`` per query, seeds ``seed + i`` for query i. Each sample is
    then checked for the marker and classified by the judge with the marker region blanked.
    """
    plant = models.world
    clf = getattr(classifier, "model", classifier)
    objective = class_probability(clf, plant.shortcut_class, name=f"the {name} classifier")
    prior = models.make_prior(ddim_steps)
    xs, conv, losses, qof = [], [], [], []
    t0 = time.perf_counter()
    for i in range(len(queries)):
        cfg = InvariantConfig(n_samples=n_samples, steps=steps, tau=tau, optimizer=optimizer, lr=lr,
                              lowpass_cutoff=lowpass_cutoff, keep_norm=True, seed=seed + i)
        res = find_invariants(objective, queries[i : i + 1], prior, cfg)
        xs.append(res.x.clamp(-1, 1))
        conv.append(res.converged)
        losses.append(res.loss)
        qof.append(torch.full((n_samples,), i))
    seconds = time.perf_counter() - t0
    x = torch.cat(xs)
    judged = predict(models.judge, remove_marker(x, plant.marker_size))
    return Detection(name, x, torch.cat(conv), has_marker(x, plant.marker_size), judged, torch.cat(qof),
                     torch.cat(losses), seconds, shortcut_class=plant.shortcut_class)


READINGS = {  # interval_reading's kinds -> what they mean, as the chapter's prose says it
    "apart": "the intervals do not overlap — the invariant sets expose the shortcut",
    "reversed": "the control shows more of them — the method did not find the shortcut in this run",
    "overlap": "the intervals overlap — this run cannot tell the two classifiers apart",
    "empty": "one of the invariant sets has no member — this run cannot compare them",
}


def interval_reading(summaries: dict) -> str:
    """``"apart"`` (the shortcut classifier's interval lies above the control's), ``"reversed"`` (below),
    ``"overlap"``, or ``"empty"`` (a classifier has no member, so no interval); see :data:`READINGS`."""
    s, c = summaries["shortcut"]["interval"], summaries["control"]["interval"]
    if not all(np.isfinite(v) for v in (*s, *c)):
        return "empty"
    if s[0] > c[1]:
        return "apart"
    if c[0] > s[1]:
        return "reversed"
    return "overlap"


def verdict(summaries: dict, shortcut_class: int = 3) -> str:
    """One sentence on what the two invariant sets show, computed from their summaries
    (``{"shortcut": Detection.summary(), "control": ...}``): do their bootstrap intervals overlap?"""
    s, c = summaries["shortcut"], summaries["control"]
    head = (f"Planted-shortcut members: {s['share']:.0%} of the shortcut classifier's members "
            f"[{s['interval'][0]:.0%}, {s['interval'][1]:.0%}] against {c['share']:.0%} of the control's "
            f"[{c['interval'][0]:.0%}, {c['interval'][1]:.0%}]")
    return f"{head}: {READINGS[interval_reading(summaries)]}."


@torch.no_grad()
def query_probabilities(models: ShortcutModels, queries: torch.Tensor) -> dict:
    """(n,) the probability of the shortcut class that the shortcut and the control classifier give each query."""
    c = models.world.shortcut_class
    return {name: torch.softmax(getattr(models, name).model(queries), 1)[:, c]
            for name in ("shortcut", "control")}


def save_detections(detections: dict, path) -> None:
    """Write every detection's samples and per-sample verdicts to one safetensors file
    (``<name>.x``, ``.converged``, ``.marked``, ``.judged``, ``.query_of``, ``.loss``)."""
    tensors = {}
    for name, d in detections.items():
        for key in ("x", "converged", "marked", "judged", "query_of", "loss"):
            tensors[f"{name}.{key}"] = getattr(d, key).detach().cpu().contiguous()
    save_file(tensors, str(path))


def selection_study(pool_x, relevant, train_x, k: int, *, novelty_weight: float = 0.5, space: str = "pixels",
                    model=None, seed: int = 0, ks=(4, 8, 16), n_draws: int = 2000) -> dict:
    """The member selection on one pool (:func:`equidiff.core.members.evaluate_selection`): ``main`` at ``k``
    as configured; ``curve``, the same at each of ``ks`` that the pool allows; ``ablation``, precision at
    ``k`` with each part of the score alone (``"diversity"``: w = 0, ``"novelty"``: w = 1) and with the
    distances measured in the other space (``"other_space"``, named by ``other_space_name``; NaN for the
    classifier's features when no ``model`` is given). The ablation is measured on the same samples: a
    check afterwards, not how the defaults were chosen. ``n_draws``: random choices per baseline."""
    check_choice("space", space, SELECT_SPACES)

    def run(kk, w=novelty_weight, sp=space):
        return evaluate_selection(pool_x, relevant, train_x, kk, novelty_weight=w, space=sp, model=model,
                                  n_draws=n_draws, seed=seed)

    other = next(sp for sp in SELECT_SPACES if sp != space)
    ablation = {"diversity": run(k, 0.0)["precision_at_k_selected"], "novelty": run(k, 1.0)["precision_at_k_selected"],
                "other_space": run(k, sp=other)["precision_at_k_selected"] if model is not None or other == "pixels"
                else float("nan"), "other_space_name": other}  # the judge's features need the judge
    return {"main": run(k), "curve": [run(kk) for kk in ks if kk <= len(pool_x)], "ablation": ablation,
            "n_draws": int(n_draws)}


# --------------------------------------------------------------------------------------------
# Member selection in the other chapters' settings
# --------------------------------------------------------------------------------------------


def circles_selection(query, k: int, novelty_weight: float = 0.5, n: int = 256, tau: float = 0.005,
                      seed: int = 0) -> dict:
    """The 2D chapter's setting: ``n`` invariant points of ``query`` under the circles MLP, and ``k``
    of them chosen against the MLP's training points. Returns ``model``, ``points`` (n, 2),
    ``train`` (M, 2) and ``selection`` (:class:`~equidiff.core.members.Selection`)."""
    model, _ = toy.load_classifier()
    cfg = toy.CirclesConfig()
    train, _ = toy.circles_data(cfg.n_train, cfg.extent, cfg.seed)
    points = np.asarray(circles_chapter.analyse_query(model, query, n=n, tau=tau, seed=seed)["points"])
    return {"model": model, "points": points, "train": np.asarray(train),
            "selection": select_members(points, np.asarray(train), min(k, len(points)), novelty_weight)}


def neuron_selection(world, neuron: int, k: int, novelty_weight: float = 0.5, *, n_samples: int = 24,
                     steps: int = 200, ddim_steps: int = 10, tau: float = 0.01, seed: int = 0) -> dict:
    """The neuron chapter's setting: invariant samples of channel ``neuron`` of ``world.neuron_layer``
    (:func:`equidiff.chapters.neurons.run_neuron`, its default L-BFGS) and ``k`` of them chosen
    against the world's images (its training digits).

    Returns ``x`` (the pool: members, or all samples when fewer than k converged), ``note`` (which),
    ``selection``, ``rest`` (up to k pool members not selected), ``predicted`` (the classifier's class
    per pool member), ``n_members`` / ``n_samples``, and what the run found the neuron to be: ``neuron``,
    ``concept`` and ``alignment`` (its best-aligned concept and r; the thesis' where the world labels
    none), ``query_label`` (the class of its strongest-activating image x*).
    """
    table = eqn.neuron_table(world)
    run = eqn.run_neuron(world, table, neuron, n_samples=n_samples, steps=steps, ddim_steps=ddim_steps, tau=tau,
                         seed=seed)
    pool, note = member_pool(run.result.converged, k)
    x = run.result.x[pool].clamp(-1, 1)
    chosen = select_members(x, world.images, k, novelty_weight)
    rest = [i for i in range(len(x)) if i not in chosen.indices][: len(chosen.indices)]
    return {"x": x, "note": note, "selection": chosen, "rest": rest, "predicted": run.predicted[pool],
            "n_members": int(run.result.converged.sum()), "n_samples": int(run.result.converged.numel()),
            "neuron": int(neuron), "concept": run.concept, "alignment": float(run.alignment),
            "query_label": int(run.query_label)}


# --------------------------------------------------------------------------------------------
# The chapter's metrics.json
# --------------------------------------------------------------------------------------------


def chapter_metrics(params: dict, reliance: dict, query_index, summaries: dict, study: dict, demo: dict,
                    seconds: float) -> dict:
    """What the chapter writes to ``metrics.json``: ``params`` (the notebook's parameters, as run),
    ``reliance`` (shortcut reliance per classifier), the marked queries' indices, the detection
    ``summaries`` (:meth:`Detection.summary` per classifier), the member-selection ``study``
    (:func:`selection_study`) and the neuron selection ``demo`` (:func:`neuron_selection`)."""
    selection, curve = study["main"], study["curve"]
    novelty = np.asarray(demo["selection"].novelty)
    return {
        "profile": params["profile"],
        "world": {key: params[key] for key in ("shortcut_class", "marker_rate", "other_rate", "marker_size")},
        "shortcut_reliance": {name: reliance[name] for name in ("shortcut", "control", "judge")},
        "queries": query_index,
        "detection": {
            "shortcut_share": summaries["shortcut"]["share"],
            "shortcut_interval": summaries["shortcut"]["interval"],
            "control_share": summaries["control"]["share"],
            "control_interval": summaries["control"]["interval"],
            "shortcut": summaries["shortcut"],
            "control": summaries["control"],
            "n_samples_per_query": params["n_samples"], "steps": params["steps"], "tau": params["tau"],
        },
        "selection": {**{key: selection[key] for key in ("precision_at_k_selected", "precision_at_k_random",
                                                          "random_range", "base_rate", "k", "space", "novelty_weight")},
                      "by_k": [{key: c[key] for key in ("k", "precision_at_k_selected", "precision_at_k_random")}
                               for c in curve],
                      "each_part_alone": study["ablation"]},
        "selection_neuron": {"neuron": params["neuron"], "members": demo["n_members"], "concept": demo["concept"],
                             "query_label": demo["query_label"],
                             "novelty_selected": float(np.mean(novelty[demo["selection"].indices])),
                             "novelty_all": float(np.mean(novelty))},
        "parameters": params,
        "seconds": seconds,
    }
