"""Every number, unit id and count in a chapter's prose comes from the run (myst-nb glue), never typed.

The rule, checked on every markdown cell of ``notebooks/*.ipynb``: after removing what may hold a
number, no digit is left. What may hold one:

* a glue role, ``{glue:text}`key:.3f``` — the run's value;
* inline code and math (``steps = 150`` as the reader types it; ``$7 \\times 7$``, ``$x^*$``);
* a reference to the thesis' structure: Section / Figure / Fig. / Table / Eq. / Algorithm / Appendix / Chapter N;
* a citation year (``[Dreyer et al., 2025]``), a name with a number in it (``ResNet-50``, ``L2``, ``2D``);
* a sentence that names the thesis ("the thesis reports …"): thesis figures are quoted beside ours,
  with the difference in scale stated, and are the thesis' own numbers;
* a licence (``CC BY-SA 3.0``), a markdown heading's chapter number and a link target.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

_REMOVE = [
    r"\{glue(?::\w+)?\}`[^`]*`",  # glue roles
    r"`[^`]*`",  # inline code
    r"\$\$.*?\$\$",  # display math
    r"\$[^$]*\$",  # inline math
    r"\]\([^)]*\)",  # link targets
    r"(?:Sections?|Figures?|Figs?\.|Tables?|Eqs?\.|Equations?|Algorithms?|Appendix|Appendices|Chapters?|lines?)"
    r"\s*[\d.]+(?:\s*(?:[-–,]|and|&)\s*[\d.]+)*",  # thesis structure
    r"et al\.,?\s*\d{4}",  # citation years
    r"CC BY(?:-SA)? \d\.\d",  # licence
    r"\b[A-Za-z]+[-_]?\d+[A-Za-z\d]*\b",  # names with digits: ResNet-50, L2, float32, CIFAR10
    r"\b\d+[A-Za-z]+\b",  # 2D, 3rd, 16px
]


def _sentences(text: str):
    return re.split(r"(?<=[.!?])\s+|\n\s*\n", text)


def stray_numbers(markdown: str) -> list[str]:
    """The sentences of ``markdown`` that still hold a digit after removing what may hold one."""
    text = re.sub(r"^#+ .*$", lambda m: re.sub(r"\d", "", m.group(0)), markdown, flags=re.M)  # headings' numbers
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    bad = []
    for sentence in _sentences(text):
        if re.search(r"\bthesis\b", sentence, re.I):
            continue
        s = sentence
        for pat in _REMOVE:
            s = re.sub(pat, " ", s, flags=re.S)
        if re.search(r"\d", s):
            bad.append(" ".join(sentence.split())[:160])
    return bad


def test_the_rule_catches_a_typed_number_and_passes_a_glued_one():
    assert stray_numbers("All 96 samples converged.")
    assert stray_numbers("success 1.00 for neuron #55")
    assert not stray_numbers("All {glue:text}`n_ok` samples converged (Figure 4.2, Section 4.2.2).")
    assert not stray_numbers("The thesis reports an FID of 28.5 at 256 pixels.")
    assert not stray_numbers("Run it with `steps = 150` on ResNet-50; $7 \\times 7$ map [Dreyer et al., 2025].")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_prose_types_no_number(path):
    nb = json.loads(path.read_text())
    bad = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            bad += [f"cell {i}: {s}" for s in stray_numbers("".join(cell["source"]))]
    assert not bad, f"{path.name}: numbers typed by hand in the prose (glue them from the run):\n" + "\n".join(bad)
