"""Publishing the book: the Pages workflow, the licence, the citation file, the bibliography, the landing page.

Cheap checks, no book build: the workflow cannot run here, so what is checked is that it parses and
runs the README's commands on the folder the build writes; the landing page is written from a fake
``_generated`` tree. The built book (with its bibliography and cards) is checked by tests/test_book.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
BIB = ROOT / "book" / "references.bib"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(job: dict, uses: str) -> list[dict]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith(uses)]


def _runs(job: dict) -> list[str]:
    return [s["run"].strip() for s in job["steps"] if "run" in s]


# ---------------------------------------------------------------- the workflow


def test_the_workflow_builds_with_the_readme_command_on_push_and_pull_request():
    wf = _workflow()
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as True
    assert on["push"]["branches"] == ["main"] and "pull_request" in on
    build = wf["jobs"]["build"]
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make book" in _runs(build)
    py = _steps(build, "actions/setup-python")
    assert py and str(py[0]["with"]["python-version"]) == "3.11" and py[0]["with"]["cache"] == "pip"


def test_the_test_job_runs_the_ci_entry_point_which_runs_make_test():
    job = _workflow()["jobs"]["test"]
    assert any(r.endswith(".ci/run") for r in _runs(job))
    assert re.search(r"^make test\b", (ROOT / ".ci" / "run").read_text(), re.M)
    assert "make test" in (ROOT / "README.md").read_text()


def test_the_pages_artifact_is_the_folder_build_html_writes(monkeypatch):
    """The uploaded path is the folder of the index.html that build_html returns (nothing is built)."""
    from equidiff import build
    import equidiff.report.landing as landing

    for name in ("check_finished", "install_mathjax"):
        monkeypatch.setattr(build, name, lambda book: None)
    monkeypatch.setattr(build, "book_chapters", lambda book: [])
    monkeypatch.setattr(landing, "write_landing", lambda book, chapters: None)
    monkeypatch.setattr(build.subprocess, "run", lambda cmd, check: None)
    index = build.build_html(Path("book"))  # the path make book's `--book book` gives, relative to the repo
    wf = _workflow()
    pages = _steps(wf["jobs"]["build"], "actions/upload-pages-artifact")
    assert len(pages) == 1 and Path(pages[0]["with"]["path"]) == index.parent
    assert "pull_request" in pages[0]["if"]  # a pull request never publishes


def test_a_failed_build_uploads_the_html_and_the_execution_logs():
    build = _workflow()["jobs"]["build"]
    up = _steps(build, "actions/upload-artifact")
    assert len(up) == 1 and up[0]["if"] == "failure()"
    paths = up[0]["with"]["path"].split()
    for want in ("book/_build/html", "book/_build/html/reports", "book/_generated/*.ipynb"):
        assert want in paths, want


def test_the_deploy_job_has_the_pages_permissions_and_one_deployment_at_a_time():
    wf = _workflow()
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build" and _steps(deploy, "actions/deploy-pages")
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert wf["concurrency"]["cancel-in-progress"] is False
    assert wf["permissions"] == {"contents": "read"}  # the build itself gets no write access


# ---------------------------------------------------------------- licence and citation


def test_the_code_is_mit_and_the_book_states_its_licence():
    import tomllib

    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "2026 the equidiff developers" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    for page in (ROOT / "README.md", ROOT / "book" / "intro.md"):
        body = page.read_text()
        assert "CC BY 4.0" in body and "MIT" in body and "CC BY-SA 3.0" in body, page


def test_citation_cff_is_valid_and_points_at_the_thesis():
    from cffconvert import Citation

    src = (ROOT / "CITATION.cff").read_text()
    Citation(src).validate()  # raises on a schema violation
    cff = yaml.safe_load(src)
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    thesis = cff["preferred-citation"]
    assert thesis["type"] == "thesis" and thesis["thesis-type"] == "Bachelor's thesis"
    assert thesis["authors"] == [{"family-names": "Sadlej", "given-names": "Bartłomiej"}]
    assert "University of Warsaw" in thesis["institution"]["name"] and thesis["year"] == 2025


def test_the_cff_check_can_fail():
    import jsonschema
    from cffconvert import Citation

    bad = (ROOT / "CITATION.cff").read_text().replace("family-names:", "familyname:")
    with pytest.raises(jsonschema.ValidationError):
        Citation(bad).validate()


def _bibtex_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```bibtex\n(.*?)```", text, re.S))


def test_how_to_cite_gives_the_same_parseable_bibtex_in_the_readme_and_the_book():
    from pybtex.database import parse_string

    readme, intro = (ROOT / "README.md").read_text(), (ROOT / "book" / "intro.md").read_text()
    for page in (readme, intro):
        assert "## How to cite" in page and "CITATION.cff" in page
    assert _bibtex_blocks(readme) == _bibtex_blocks(intro)
    db = parse_string(_bibtex_blocks(readme), "bibtex")
    thesis = db.entries["sadlej2025equidiff"]
    assert thesis.type == "mastersthesis" and thesis.fields["type"] == "Bachelor's thesis"
    assert "equidiff2026book" in db.entries


# ---------------------------------------------------------------- bibliography

CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")


def _cited() -> dict[str, set[str]]:
    """key -> the files citing it (book/*.md and the notebooks' markdown cells)."""
    texts = {p.name: p.read_text() for p in (ROOT / "book").glob("*.md")}
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(p.read_text())["cells"]
        texts[p.name] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    keys: dict[str, set[str]] = {}
    for name, text in texts.items():
        for group in CITE.findall(text):
            for key in group.split(","):
                keys.setdefault(key.strip(), set()).add(name)
    return keys


def test_every_cited_key_is_in_the_bibliography_and_every_entry_is_cited():
    from pybtex.database import parse_file

    entries = set(parse_file(str(BIB)).entries)
    cited = _cited()
    assert not set(cited) - entries, f"cited but not in references.bib: {sorted(set(cited) - entries)}"
    assert not entries - set(cited), f"in references.bib but never cited: {sorted(entries - set(cited))}"
    for page in ("theory.md", "intro.md", "paper_scale.md", "performance.md"):
        assert any(page in files for files in cited.values()), f"{page} cites nothing"
    assert "sadlej2025equidiff" in cited


def test_the_bibliography_page_is_configured_and_last_in_the_toc():
    cfg = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    assert cfg["bibtex_bibfiles"] == ["references.bib"]
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    assert toc["chapters"][-1] == {"file": "bibliography"}
    assert "```{bibliography}" in (ROOT / "book" / "bibliography.md").read_text()


def test_the_prose_lint_lets_citation_keys_with_years_through():
    from test_prose_numbers import stray_numbers

    assert not stray_numbers("SemanticLens {cite:p}`dreyer2025semanticlens` scores a neuron.")
    assert not stray_numbers("Diffusion {cite:p}`ho2020ddpm,song2021ddim` and Adam {cite:t}`kingma2015adam`.")
    assert stray_numbers("Diffusion {cite:p}`ho2020ddpm` takes 1000 steps.")


# ---------------------------------------------------------------- the landing page


def _png(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n")  # a figure's name is all the landing page reads


def _fake_book(tmp_path: Path) -> Path:
    """A book with three executed chapters (one without its figure, one whose metrics lack a key)."""
    book = tmp_path / "book"
    gen = book / "_generated"
    (book / "_toc.yml").parent.mkdir(parents=True)
    (book / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "intro", "chapters": [
        {"file": "theory"}, {"file": "_generated/02_neurons"}, {"file": "_generated/05_applications"},
        {"file": "_generated/03_sae"}, {"file": "bibliography"}]}))
    metrics = {
        "02_neurons": {"tau": 0.0173, "neurons": [{"channel": 55}, {"channel": 118}],
                       "average": {"success_rate": 0.8125, "l2_mean": 0.004321}},
        "05_applications": {"detection": {"shortcut_share": 0.6321, "control_share": 0.0417}},
        "03_sae": {"tau": 0.01},  # no "features": a neutral line
    }
    for name, m in metrics.items():
        (gen / name).mkdir(parents=True)
        (gen / name / "metrics.json").write_text(json.dumps(m))
        nb = {"cells": [{"cell_type": "markdown", "source": [f"# Chapter {name} (thesis Section 4.2)\n", "text"]}]}
        (gen / f"{name}.ipynb").write_text(json.dumps(nb))
    _png(gen / "02_neurons" / "figure_4_2.png")
    _png(gen / "03_sae" / "figure_4_3.png")
    return book


def test_write_landing_writes_one_card_per_chapter_with_the_numbers_of_its_run(tmp_path):
    from equidiff.build import book_chapters
    from equidiff.report.landing import NEUTRAL, write_landing

    book = _fake_book(tmp_path)
    out = write_landing(book, book_chapters(book))
    assert out == book / "_generated" / "landing.md"
    text = out.read_text()
    cards = text.split("```{grid-item-card}")[1:]
    assert len(cards) == 3 and text.count("````{grid}") == 1
    neurons, apps, sae = cards
    assert neurons.startswith(" Chapter 02_neurons\n")  # the notebook's heading, without "(thesis …)"
    assert "81%" in neurons and "#55, #118" in neurons and "τ = 0.0173" in neurons and "0.00432" in neurons
    assert "63%" in apps and "4%" in apps
    assert NEUTRAL in sae and NEUTRAL not in neurons + apps
    assert ":link: _generated/02_neurons\n" in neurons and ":link-type: doc" in neurons
    # figures: only where the run wrote one, relative to the book's root, never a machine path
    imgs = re.findall(r":img-top: (\S+)", text)
    assert imgs == ["_generated/02_neurons/figure_4_2.png", "_generated/03_sae/figure_4_3.png"]
    assert all((book / i).is_file() and not Path(i).is_absolute() for i in imgs)
    assert str(tmp_path) not in text


def test_write_landing_follows_the_metrics_file(tmp_path):
    from equidiff.build import book_chapters
    from equidiff.report.landing import write_landing

    book = _fake_book(tmp_path)
    path = book / "_generated" / "05_applications" / "metrics.json"
    path.write_text(json.dumps({"detection": {"shortcut_share": 0.25, "control_share": 0.5}}))
    text = write_landing(book, book_chapters(book)).read_text()
    assert "25% of the shortcut classifier's" in text and "against 50%" in text and "63%" not in text


def test_every_key_figure_and_finding_names_a_chapter_of_the_book():
    from equidiff.build import book_chapters, notebook_names
    from equidiff.report.landing import FINDINGS, KEY_FIGURES

    chapters = book_chapters(ROOT / "book")
    assert set(KEY_FIGURES) == set(FINDINGS) == set(chapters) == set(notebook_names())
    assert all(f.endswith(".png") for f in KEY_FIGURES.values())


def test_write_landing_refuses_a_bare_name(tmp_path):
    from equidiff.report.landing import write_landing

    with pytest.raises(ValueError, match="chapters must be a list of chapter names.*'01_circles'"):
        write_landing(tmp_path, "01_circles")


def test_the_intro_includes_the_landing_page_that_build_html_writes():
    assert "```{include} _generated/landing.md" in (ROOT / "book" / "intro.md").read_text()
    src = (ROOT / "equidiff" / "build.py").read_text()
    assert "write_landing(book, book_chapters(book))" in src
