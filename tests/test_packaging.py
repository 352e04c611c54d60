"""The set-up files agree with each other and with the README."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(deps)
    py = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert py, "environment.yml must pin a python version"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M)


def test_makefile_has_the_two_user_commands():
    mk = (ROOT / "Makefile").read_text()
    assert re.search(r"^book:", mk, re.M) and re.search(r"^test:", mk, re.M)


def test_notebooks_are_clean_sources_with_a_parameters_cell():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert any("parameters" in c.metadata.get("tags", []) for c in code), path
        assert all(not c.get("outputs") for c in code), f"{path} has stored outputs"
        params = next(c for c in code if "parameters" in c.metadata.get("tags", []))
        for line in params.source.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert line.count("=") == 1, f"{path}: papermill cannot parse {line!r}"
                assert "output_dir" in params.source
