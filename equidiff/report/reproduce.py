"""How each page of the book was made: the "Reproduce this page" box and a page without machine paths.

The book build (:mod:`equidiff.build`) calls :func:`finish_notebook` on each chapter's executed copy
once its run finished, before it records it: papermill's injected-parameters cell gets the Jupyter
Book tag ``remove-cell`` and the notebook's ``parameters`` cell ``hide-input``; a last markdown cell,
:func:`reproduce_cell`, is a collapsed sphinx-design dropdown generated from the run (the parameters
it ran with, the command that re-runs it and the equivalent papermill command, the sha256 of the
models it loaded, the machine, the wall time); and every absolute path of the build machine left in
the copy's text (the book, the repository, the notebooks' folder, the home folder) is written
relative (:func:`without_machine_paths`). ``book/_static/equidiff.css`` wraps the box's long lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def notebook_rel(notebooks: Path, name: str) -> str:
    """The source notebook's path as the reader types it: relative to the repository (``notebooks/<name>.ipynb``)."""
    notebooks = Path(notebooks).resolve()
    with contextlib.suppress(ValueError):
        return (notebooks.relative_to(REPO) / f"{name}.ipynb").as_posix()
    return f"{notebooks.name}/{name}.ipynb"


def relative(path: Path, book: Path) -> str:
    """``path`` relative to the book (or the repository) when inside it; else its name."""
    path = Path(path).resolve()
    for base in (Path(book).resolve(), REPO):
        with contextlib.suppress(ValueError):
            return path.relative_to(base).as_posix()
    return path.name


def literal(v) -> str:
    """A parameter value as the notebook's ``parameters`` cell would write it."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(x)}" for k, x in v.items()) + "}"
    return repr(v)


def papermill_option(k: str, v) -> str:
    """The papermill CLI option that passes ``k = v`` with its type (``-p`` parses ints, floats, bools,
    None; ``-r`` keeps a string that would parse as one; ``-y`` takes a list or dict as YAML/JSON)."""
    if isinstance(v, (list, tuple, dict)):
        return f"-y {shlex.quote(f'{k}: ' + json.dumps(v))}"
    if isinstance(v, str):
        parses = v in ("True", "False", "None")
        with contextlib.suppress(ValueError):
            float(v)
            parses = True
        return f"{'-r' if parses else '-p'} {k} {shlex.quote(v)}"
    return f"-p {k} {v!r}"


def machine_line(m: dict | None) -> str:
    """One line for the machine record (equidiff.training.machine); the build's own when the run wrote none."""
    if not m:
        from equidiff.training import machine

        m = machine()
    threads = f", {m['torch_threads']} torch thread(s)" if m.get("torch_threads") is not None else ""
    libs = ", ".join(f"{k} {m[k]}" for k in ("torch", "diffusers", "timm") if m.get(k))
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} core(s){threads}; Python {m.get('python', '?')}, {libs}"


def reproduce_cell(name: str, *, profile: str, injected: dict, parameters: dict, seconds: float, finished: str,
                   models: dict | None, machine: dict | None, manifest: str | None, notebook: str,
                   extra: bool = False, default_output=None) -> str:
    """The markdown of a chapter's "Reproduce this page" box (a collapsed sphinx-design dropdown),
    from its run. ``injected``: what the build passed (output_dir relative to the book);
    ``parameters``: every parameter it ran with (the run's record, else ``injected``)."""
    cli = f"python -m equidiff.build notebooks --only {name} --force"
    if profile != "cpu":
        cli += f" --profile {profile}"
    pm_args = " ".join(papermill_option(k, v) for k, v in injected.items() if k != "output_dir")
    pm_cmd = f"papermill {notebook} out.ipynb -k python3" + (f" {pm_args}" if pm_args else "")
    where = (f" (its `metrics.json` and figures go to the notebook's own `output_dir`, `{default_output}`)"
             if isinstance(default_output, str) and not Path(default_output).is_absolute() else "")
    params = "\n".join(f"{k} = {literal(v)}" + ("  # relative to the book" if k == "output_dir" else "")
                       for k, v in parameters.items())
    if models is None:
        model_text = "The run did not record the models it loaded (it wrote no `loaded_models` to its `metrics.json`)."
    elif not models:
        model_text = "The run loaded no shipped or cached model."
    else:
        rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in models.items())
        model_text = ("The models it loaded (the sha256 of each one's weights file; a shipped model's `MODEL_CARD.md` "
                      f"lists the same):\n\n| model folder | sha256 |\n| --- | --- |\n{rows}")
    if manifest:
        model_text += f"\n\nThe shipped models' manifest `data/models/manifest.json` had sha256 `{manifest}`."
    given = ("\n\nThis build was given parameters beyond its profile's, which only the papermill command passes."
             if extra else "")
    return f"""````{{dropdown}} Reproduce this page
:class-container: equidiff-reproduce

This page is `{notebook}` executed by papermill ({profile} profile) in {seconds:.{0 if seconds >= 10 else 1}f} s of wall time,
finished {finished}.

Re-run it from the repository root:

```bash
{cli}
```

or the same run by hand{where}:

```bash
{pm_cmd}
```{given}

The parameters it ran with:

```python
{params}
```

{model_text}

The machine: {machine_line(machine)}.
````
"""


def path_prefixes(book: Path, notebooks: Path) -> list[tuple[str, str]]:
    """(absolute prefix, what replaces it) for the build machine's paths, longest first."""
    pairs = {}
    for base, rel in ((Path(book), ""), (REPO, ""), (Path(notebooks).parent, ""), (Path.home(), "~/")):
        for p in {str(base), str(base.resolve())}:
            if len(p) > 1:
                pairs.setdefault(p, rel)
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def without_machine_paths(obj, prefixes: list[tuple[str, str]]):
    """``obj`` (a notebook's JSON) with each absolute ``prefix/...`` written ``<rel>...`` and a bare
    ``prefix`` written ``.`` (``~`` for the home folder), in every string except image data."""
    pats = [(re.compile(re.escape(p) + r"(?:/|(?![\w-])(?!\.\w))"), rel) for p, rel in prefixes]

    def sub(s: str) -> str:
        for pat, rel in pats:
            s = pat.sub(lambda m: rel if m.group(0).endswith("/") else (rel.rstrip("/") or "."), s)
        return s

    def walk(o, key=""):
        if isinstance(o, str):
            return sub(o)
        if isinstance(o, list):
            return [walk(x, key) for x in o]
        if isinstance(o, dict):
            return {k: (v if k.startswith("image/") or k == "application/pdf" else walk(v, k)) for k, v in o.items()}
        return o

    return walk(obj)


def finish_notebook(path: Path, name: str, book: Path, notebooks: Path, reproduce: str) -> None:
    """Make the executed copy at ``path`` a page: tag papermill's injected-parameters cell ``remove-cell``
    and the ``parameters`` cell ``hide-input``, append the "Reproduce this page" cell, write every
    machine path relative (:func:`without_machine_paths`). Written atomically in place."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        for have, add in (("injected-parameters", "remove-cell"), ("parameters", "hide-input")):
            if have in tags and add not in tags:
                tags.append(add)
    nb["cells"].append({"cell_type": "markdown", "id": "reproduce-this-page", "metadata": {"tags": ["reproduce"]},
                        "source": reproduce})
    pm_meta = nb.setdefault("metadata", {}).setdefault("papermill", {})
    pm_meta["input_path"] = notebook_rel(notebooks, name)
    pm_meta["output_path"] = f"_generated/{name}.ipynb"
    nb = without_machine_paths(nb, path_prefixes(book, notebooks))
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
