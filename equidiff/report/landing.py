"""The book's landing page: one card per executed chapter, with its key figure and one finding.

``write_landing(book, chapters)`` writes ``<book>/_generated/landing.md``, a sphinx-design grid that
``book/intro.md`` includes. Each card shows a figure the chapter's run wrote into
``<book>/_generated/<chapter>/`` and a line composed from that run's ``metrics.json``: every number
on it is formatted from the file, none is typed. A chapter whose figure or metrics are missing, or
whose metrics lack a key a line needs, gets its card with a neutral line instead of an error.
Paths are relative to the book's root (where ``intro.md`` is), so the built HTML holds no path of the
build machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

# The representative figure of each chapter (a file its notebook writes into its output folder).
KEY_FIGURES: dict[str, str] = {
    "00_world": "prior_samples.png",
    "01_circles": "figure_3_1.png",
    "02_neurons": "figure_4_2.png",
    "03_sae": "figure_4_3.png",
    "04_classifier": "figure_4_4.png",
    "05_applications": "shares.png",
    "06_own_classifier": "members_class.png",
}

NEUTRAL = "Open the chapter for what this run found."

# The figures differ in shape: each is fitted into a band of one height, so the cards line up.
_STYLE = ("<style>.equidiff-landing .sd-card-img-top {height: 12rem; object-fit: contain; "
          "background: #fff; padding: 0.25rem;}</style>")


def _at(m: Any, path: str) -> Any:
    """``m["a"]["b"][0]`` for ``path = "a.b.0"``; KeyError, IndexError or TypeError when it is not there."""
    for part in path.split("."):
        m = m[int(part)] if isinstance(m, list) else m[part]
    if m is None:
        raise KeyError(path)
    return m


def _mean(xs: list[float]) -> float:
    if not xs:
        raise ValueError("no values")
    return sum(xs) / len(xs)


def _world(m: dict) -> str:
    verdict = "passes" if _at(m, "quality.passed") else "does not pass"
    return (f"{_at(m, 'quality.share_confident'):.0%} of {_at(m, 'quality.n')} unoptimised prior samples get a "
            f"judge confidence of at least {_at(m, 'confidence_threshold'):g} (gate: {_at(m, 'gate_share'):.0%}); "
            f"the prior {verdict} its gate.")


def _circles(m: dict) -> str:
    cover = [float(_at(q, "coverage")) for q in _at(m, "queries")]
    prior = _mean([float(_at(q, "success_rate")) for q in _at(m, "prior")])
    return (f"Optimised freely, the samples cover {min(cover):.0%} to {max(cover):.0%} of the exact level "
            f"curves; through a 2D diffusion prior {prior:.0%} of the starting noises reach them.")


def _neurons(m: dict) -> str:
    ids = ", ".join(f"#{_at(n, 'channel')}" for n in _at(m, "neurons"))
    return (f"{_at(m, 'average.success_rate'):.0%} of the samples of neurons {ids} match the neuron's whole "
            f"activation map below τ = {_at(m, 'tau'):g} (mean L2 {_at(m, 'average.l2_mean'):.3g}).")


def _sae(m: dict) -> str:
    feats = _at(m, "features")
    success = _mean([float(_at(f, "success_rate")) for f in feats])
    spread = sum(int(_at(f, "sample_classes")) > int(_at(f, "real_classes")) for f in feats)
    return (f"{success:.0%} of the samples of {len(feats)} SAE features reach τ = {_at(m, 'tau'):g}; for "
            f"{spread} of them the samples' labels spread over more classes than the top real digits'.")


def _classifier(m: dict) -> str:
    cp = {x["name"]: x for x in _at(m, "methods") if x.get("mode") == "class_probability"}
    return (f"Keeping one class probability, EquiDiff's samples put {_at(cp, 'equidiff.high_freq_share'):.2f} "
            f"of their spectral power above half Nyquist, pixel-space optimisation "
            f"{_at(cp, 'pixel.high_freq_share'):.2f}, real digits {_at(m, 'reference.high_freq_share'):.2f}.")


def _applications(m: dict) -> str:
    return (f"{_at(m, 'detection.shortcut_share'):.0%} of the shortcut classifier's invariant samples are "
            f"planted-shortcut members, against {_at(m, 'detection.control_share'):.0%} of the control's.")


def _own_model(m: dict) -> str:
    cls = _at(m, "runs.class")
    return (f"{_at(m, 'success_rate.class'):.0%} of the samples keep ccexam's class probability of the query; "
            f"ccexam calls {_at(cls, 'model_agreement'):.0%} of them the query's class, the project's judge "
            f"{_at(cls, 'judge_agreement'):.0%}.")


FINDINGS: dict[str, Callable[[dict], str]] = {
    "00_world": _world, "01_circles": _circles, "02_neurons": _neurons,
    "03_sae": _sae, "04_classifier": _classifier, "05_applications": _applications,
    "06_own_classifier": _own_model,
}


def finding(chapter: str, metrics: dict | None) -> str:
    """The card's line for ``chapter`` from its ``metrics.json`` (:data:`NEUTRAL` when it cannot be made)."""
    make = FINDINGS.get(chapter)
    if make is None or not isinstance(metrics, dict):
        return NEUTRAL
    try:
        return make(metrics)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return NEUTRAL


def chapter_title(gen: Path, chapter: str) -> str:
    """The first heading of the chapter's executed notebook, without a trailing "(thesis …)"; else its name."""
    try:
        nb = json.loads((Path(gen) / f"{chapter}.ipynb").read_text(encoding="utf-8"))
        for cell in nb.get("cells", []):
            if cell.get("cell_type") == "markdown":
                src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
                for line in src.splitlines():
                    if line.startswith("# "):
                        return re.sub(r"\s*\(thesis [^)]*\)\s*$", "", line[2:]).strip()
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return chapter


def _card(gen: Path, chapter: str) -> str:
    folder = Path(gen) / chapter
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = None
    title = chapter_title(gen, chapter)
    lines = [f"```{{grid-item-card}} {title}"]
    figure = KEY_FIGURES.get(chapter)
    if figure and (folder / figure).is_file():
        # relative to the book's root, where intro.md includes this file
        lines += [f":img-top: {gen.name}/{chapter}/{figure}", f":img-alt: a figure of the chapter {title}"]
    lines += [f":link: {gen.name}/{chapter}", ":link-type: doc", ":shadow: md", "", finding(chapter, metrics), "```"]
    return "\n".join(lines)


def write_landing(book: Path, chapters: list[str]) -> Path:
    """Write ``<book>/_generated/landing.md``: a grid of one card per chapter of ``chapters`` (the executed
    chapters the book's ``_toc.yml`` lists, ``equidiff.build.book_chapters(book)``); returns its path."""
    if isinstance(chapters, (str, bytes)) or not all(isinstance(c, str) and c for c in chapters):
        raise ValueError(f"chapters must be a list of chapter names such as ['01_circles'], got {chapters!r}")
    gen = Path(book) / "_generated"
    gen.mkdir(parents=True, exist_ok=True)
    text = "<!-- written by equidiff.report.landing.write_landing from each chapter's run; do not edit -->\n\n"
    if chapters:
        cards = "\n\n".join(_card(gen, c) for c in chapters)
        text += (_STYLE + "\n\n````{grid} 1 2 2 2\n:gutter: 3\n:class-container: equidiff-landing\n\n"
                 + cards + "\n````\n")
    else:
        text += "This book lists no executed chapter yet.\n"
    out = gen / "landing.md"
    out.write_text(text, encoding="utf-8")
    return out
