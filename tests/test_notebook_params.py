"""Every notebook stops a misspelt or bad parameter in its first code cell, naming the parameter.

Papermill only logs "Passed unknown parameter" and runs on the defaults; a bad value used to stop
minutes into a run with an internal argument's name ("n must be ...", "num_steps ..."). Each
notebook's first code cell calls :func:`equidiff.report.record.check_notebook_parameters` with its
chapter's ``check_parameters``. Here: the function on plain dicts (every parameter of every chapter,
fast), then each notebook on the smoke profile with at least five bad values (wrong type, out of
range, unknown name, empty list, NaN), up to that first code cell only (a copy of its first cells).
Papermill writes the parameters cell it injects for every case; the unknown-name case of each notebook
and the good runs execute in a papermill kernel (two at a time; a kernel's own names must not count as
parameters), the other cases execute those same cells in this process (a kernel costs seconds to start
and import torch: 37 kernels took 85 s of the suite, these 9 and the 28 in-process cases 33 s).
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import papermill as pm
import pytest

from equidiff.build import PROFILES
from equidiff.chapters import applications, circles, classifier, neurons, own_model, sae, world
from equidiff.report.record import KERNEL_NAMES, check_notebook_parameters, notebook_defaults

ROOT = Path(__file__).resolve().parent.parent
NAN = float("nan")
CHECKS = {"00_world": world.check_parameters, "01_circles": circles.check_parameters, "02_neurons": neurons.check_parameters,
          "03_sae": sae.check_parameters, "04_classifier": classifier.check_parameters,
          "05_applications": applications.check_parameters, "06_own_classifier": own_model.check_parameters}


def _check(notebook, **changes):
    return check_notebook_parameters({**notebook_defaults(notebook), **changes}, notebook, CHECKS[notebook])


# --------------------------------------------------------------------------------------------
# The function, on plain dicts
# --------------------------------------------------------------------------------------------


def test_every_notebook_calls_the_check_in_its_first_code_cell():
    for name, check in CHECKS.items():
        cells = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        i = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        first = next(c for c in cells[i + 1:] if c["cell_type"] == "code")
        src = "".join(first["source"])
        assert f'check_notebook_parameters(globals(), "{name}", ' in src, name
        # before any work: the call is the first statement after the imports
        body = [ln for ln in src.splitlines() if ln.strip() and not ln.startswith(("import ", "from "))]
        assert body[0].startswith("check_notebook_parameters("), (name, body[0])


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_defaults_and_smoke_profile_pass(name):
    defaults = notebook_defaults(name)
    assert _check(name) == defaults
    assert _check(name, **PROFILES["smoke"][name]) == {**defaults, **PROFILES["smoke"][name]}


@pytest.mark.parametrize("name, typo, meant", [
    ("01_circles", "n_invarient", "n_invariant"),
    ("02_neurons", "neuron", "neurons"),
    ("03_sae", "feature", "features"),
    ("04_classifier", "cutof", "cutoffs"),
    ("05_applications", "marker_rates", "marker_rate"),
    ("06_own_classifier", "chanel", "channel"),
])
def test_unknown_parameter_is_named_with_the_closest_one(name, typo, meant):
    with pytest.raises(ValueError, match=re.escape(f"unknown parameter {typo!r}; did you mean {meant!r}?")):
        _check(name, **{typo: 8})


def test_unknown_parameters_all_named_and_without_a_close_one_the_list():
    with pytest.raises(ValueError) as err:
        _check("01_circles", zzz=1, stpes=3)
    msg = str(err.value)
    assert "unknown parameter 'zzz' (" not in msg and "unknown parameter 'zzz';" in msg
    assert "unknown parameter 'stpes'; did you mean 'steps'?" in msg
    assert "notebook 01_circles takes the parameters seed, query_points, n_invariant" in msg


def test_kernel_names_imports_and_the_notebooks_own_names_are_not_parameters():
    import math as a_module

    ns = {**notebook_defaults("02_neurons"), **{k: object() for k in KERNEL_NAMES}, "_": 1, "_i3": "x",
          "__builtins__": {}, "a_module": a_module, "a_function": len, "a_class": Path, "f": lambda: 0,
          # bound by the notebook's later cells: present when a reader re-runs the first cell in Jupyter
          "world": object(), "settings": {}, "runs": [], "t_start": 0.0}
    assert check_notebook_parameters(ns, "02_neurons", neurons.check_parameters)["seed"] == 0
    with pytest.raises(ValueError, match="unknown parameter 'worlds'; did you mean"):
        check_notebook_parameters({**ns, "worlds": "cpu"}, "02_neurons")


def test_missing_notebook_or_parameter():
    with pytest.raises(ValueError, match="notebook must name a notebook of"):
        check_notebook_parameters({}, "06_nothing")
    with pytest.raises(ValueError, match=r"namespace lacks the parameters \['seed'\]"):
        d = notebook_defaults("01_circles")
        del d["seed"]
        check_notebook_parameters(d, "01_circles")


# (notebook, parameter, bad value): every one must raise ValueError naming the parameter
BAD = {
    "00_world": [
        ("seed", -1), ("n_samples", 5), ("n_samples", "many"), ("ddim_steps", 0), ("compare_steps", -1),
        ("compare_steps", 2.5), ("stochastic_steps", -1), ("stochastic_samples", 5), ("profile", "paper"),
        ("output_dir", ""),
    ],
    "01_circles": [
        ("seed", -1), ("seed", 1.5), ("query_points", []), ("query_points", "0.5,0.3"), ("query_points", [[0.1]]),
        ("query_points", [[NAN, 0.0]]), ("query_points", [[9.0, 0.0]]), ("n_invariant", -5), ("n_invariant", "many"),
        ("n_invariant", True), ("tau", NAN), ("tau", 0), ("tau", 1.5), ("optimizer", "adamw"), ("steps", -1),
        ("steps", NAN), ("prior_points", 0), ("prior_points", 2.5), ("prior_steps", -3), ("ddim_steps", 0),
        ("ddim_steps", None), ("output_dir", ""), ("output_dir", 3),
    ],
    "02_neurons": [
        ("profile", "gpu"), ("seed", "0"), ("neurons", []), ("neurons", [1, -2]), ("neurons", "all"),
        ("neurons", [3, 3]), ("neurons", [NAN]), ("concept_set", 3), ("n_samples", 1), ("n_samples", NAN),
        ("steps", "ten"), ("steps", -1), ("tau", NAN), ("tau", -0.1), ("optimizer", "lbgfs"), ("lr", NAN), ("lr", 0),
        ("restart_after", 0), ("restart_limit", 0), ("lowpass_cutoff", 1.5), ("lowpass_cutoff", NAN), ("workers", 0),
        ("workers", "2"),
        ("ddim_steps", 0), ("ddim_steps", []), ("output_dir", None),
    ],
    "03_sae": [
        ("profile", ""), ("seed", NAN), ("layer", -1), ("layer", "1"), ("sae_kind", "gated"), ("expansion", 0),
        ("expansion", 2.5), ("sae_steps", 0), ("readout", "tokens"), ("features", []), ("features", [1, "2"]),
        ("features", 5), ("n_features", 0), ("n_features", "3"), ("concept_set", ["digits"]), ("min_rate", NAN),
        ("min_rate", 1.0), ("max_rate", 0), ("max_rate", NAN), ("objective", "codes"), ("n_samples", 0),
        ("steps", -1), ("tau", 0), ("optimizer", "lbfgs"), ("lr", -1), ("lowpass_cutoff", 0), ("ddim_steps", 0),
        ("vit_preset", 3), ("output_dir", ""),
    ],
    "04_classifier": [
        ("profile", None), ("seed", -1), ("query_index", -1), ("query_index", "0"), ("mode", "all"), ("mode", []),
        ("methods", []), ("methods", ["equidiff", "diffusion"]), ("cutoffs", []), ("cutoffs", "0.5"),
        ("cutoffs", [0.1, NAN]), ("cutoffs", [0.0]), ("lowpass_cutoff", NAN), ("lowpass_cutoff", 1),
        ("n_samples", 1), ("steps", -1), ("tau", NAN), ("optimizer", "rmsprop"), ("lr", 0), ("keep_norm", "yes"),
        ("guidance_scale", -1), ("guidance_scale", NAN), ("ddim_steps", 0), ("output_dir", ""),
    ],
    "05_applications": [
        ("profile", "paperr"), ("seed", -1), ("shortcut_class", 12), ("shortcut_class", "3"), ("marker_rate", NAN),
        ("marker_rate", 1.5), ("other_rate", -0.1), ("marker_size", 5), ("marker_size", "big"), ("n_queries", 0),
        ("n_samples", 1), ("steps", -1), ("tau", NAN), ("optimizer", "newton"), ("lr", 0), ("lowpass_cutoff", 1.0),
        ("ddim_steps", 0), ("k", 0), ("k", []), ("novelty_weight", NAN), ("novelty_weight", 2),
        ("select_space", "features"), ("neuron", -1), ("neuron", 5.5), ("neuron_samples", 1), ("neuron_steps", -1),
        ("circle_query", []), ("circle_query", [0.5, NAN]), ("output_dir", 0),
    ],
    "06_own_classifier": [
        ("profile", "paper"), ("profile", None), ("seed", -1), ("seed", NAN), ("query_index", -1),
        ("query_index", "0"), ("fit", "crop"), ("fit", None), ("interpolation", "nearest"), ("interpolation", 3),
        ("measure", "logit"), ("layer", "conv1"), ("layer", "features.1"), ("layer", []), ("channel", -1),
        ("channel", 64), ("channel", 2.5), ("channel", "3"), ("reduce", "max"), ("n_samples", 1), ("n_samples", "8"),
        ("steps", -1), ("steps", NAN), ("ddim_steps", 0), ("tau", NAN), ("tau", 0), ("optimizer", "rmsprop"),
        ("lr", 0), ("lr", NAN), ("keep_norm", "yes"), ("lowpass_cutoff", 1.0), ("lowpass_cutoff", NAN),
        ("output_dir", ""),
    ],
}


@pytest.mark.parametrize("name, param, value", [(n, p, v) for n, cases in BAD.items() for p, v in cases],
                         ids=lambda v: repr(v)[:20])
def test_bad_value_names_its_parameter(name, param, value):
    with pytest.raises(ValueError) as err:
        _check(name, **{param: value})
    assert str(err.value).startswith(param), str(err.value)  # "<parameter> must be ..., got <value>"


def test_every_parameter_of_every_notebook_has_a_bad_value_tried():
    # the paper-only parameters are checked by load_world (tests/test_paper_notebooks.py)
    paper_only = {"paper_config", "query_images", "batch_size", "bf16", "device"}
    for name, cases in BAD.items():
        missing = set(notebook_defaults(name)) - paper_only - {p for p, _ in cases}
        assert not missing, f"{name}: no bad value tried for {sorted(missing)}"


def test_messages_name_the_parameter_not_an_internal_argument():
    with pytest.raises(ValueError, match=r"^n_invariant must be an integer ≥ 1 \(invariant points per query\), "
                                         r"got -5$"):
        _check("01_circles", n_invariant=-5)
    with pytest.raises(ValueError, match=r"^ddim_steps must be an integer ≥ 1 \(DDIM steps of the 2D prior\), "
                                         r"got 0$"):
        _check("01_circles", ddim_steps=0)
    with pytest.raises(ValueError, match=r"^query_points must be a non-empty list of points \[x, y\], got \[\]$"):
        _check("01_circles", query_points=[])
    with pytest.raises(ValueError, match=r"^sae_kind must be None or one of \('relu', 'topk'\), got 'gated'$"):
        _check("03_sae", sae_kind="gated")
    with pytest.raises(ValueError, match=r"^n_features must be an integer ≥ 1 \(features 'auto' picks\), got 0$"):
        _check("03_sae", n_features=0)
    with pytest.raises(ValueError, match=r"^guidance_scale must be a finite number ≥ 0"):
        _check("04_classifier", guidance_scale=-1)
    with pytest.raises(ValueError, match=r"^tau must be a number in \(0, 1\) .*got nan$"):
        _check("01_circles", tau=NAN)


# --------------------------------------------------------------------------------------------
# Papermill runs, smoke profile, up to the first code cell
# --------------------------------------------------------------------------------------------

# (notebook, kind, parameter given, value, the parameter the error must name)
PAPERMILL = [
    ("00_world", "out of range", "n_samples", 5, "n_samples"),
    ("00_world", "unknown name", "n_sample", 50, "n_samples"),
    ("01_circles", "wrong type", "n_invariant", "many", "n_invariant"),
    ("01_circles", "out of range", "n_invariant", -5, "n_invariant"),
    ("01_circles", "out of range", "ddim_steps", 0, "ddim_steps"),
    ("01_circles", "unknown name", "n_invarient", 8, "n_invariant"),
    ("01_circles", "empty list", "query_points", [], "query_points"),
    ("01_circles", "NaN", "tau", NAN, "tau"),
    ("02_neurons", "wrong type", "steps", "ten", "steps"),
    ("02_neurons", "out of range", "n_samples", 1, "n_samples"),
    ("02_neurons", "unknown name", "neuron", 5, "neurons"),
    ("02_neurons", "empty list", "neurons", [], "neurons"),
    ("02_neurons", "NaN", "lr", NAN, "lr"),
    ("03_sae", "wrong type", "sae_kind", "gated", "sae_kind"),
    ("03_sae", "out of range", "n_features", 0, "n_features"),
    ("03_sae", "unknown name", "feature", [3], "features"),
    ("03_sae", "empty list", "features", [], "features"),
    ("03_sae", "NaN", "min_rate", NAN, "min_rate"),
    ("04_classifier", "wrong type", "cutoffs", "0.5", "cutoffs"),
    ("04_classifier", "out of range", "guidance_scale", -1, "guidance_scale"),
    ("04_classifier", "unknown name", "cutof", [0.5], "cutoffs"),
    ("04_classifier", "empty list", "cutoffs", [], "cutoffs"),
    ("04_classifier", "NaN", "lowpass_cutoff", NAN, "lowpass_cutoff"),
    ("05_applications", "wrong type", "marker_size", "big", "marker_size"),
    ("05_applications", "out of range", "shortcut_class", 12, "shortcut_class"),
    ("05_applications", "unknown name", "marker_rates", 0.5, "marker_rate"),
    ("05_applications", "empty list", "circle_query", [], "circle_query"),
    ("05_applications", "NaN", "novelty_weight", NAN, "novelty_weight"),
    ("06_own_classifier", "wrong type", "channel", "3", "channel"),
    ("06_own_classifier", "out of range", "channel", 64, "channel"),
    ("06_own_classifier", "unknown name", "chanel", 3, "channel"),
    ("06_own_classifier", "empty list", "layer", [], "layer"),
    ("06_own_classifier", "NaN", "tau", NAN, "tau"),
    ("06_own_classifier", "wrong type", "profile", "paper", "profile"),
]
# good runs of the same first cells: nothing of the kernel is taken for a parameter; 05 loads its world
GOOD = ["01_circles", "05_applications"]


def _head(name: str, folder: Path, tag: str = "") -> tuple[Path, int]:
    """A copy of the notebook up to its first code cell after ``parameters``; the index that cell has once
    papermill has injected its parameters cell. ``tag`` names the copy: jobs run two at a time, and one
    job rewriting a head another is reading gave papermill an empty notebook."""
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    i = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c["metadata"].get("tags", []))
    j = next(j for j in range(i + 1, len(nb["cells"])) if nb["cells"][j]["cell_type"] == "code")
    nb["cells"] = nb["cells"][: j + 1]
    path = folder / f"{name}_head{tag}.ipynb"
    path.write_text(json.dumps(nb))
    return path, j + 1


def _tag(params: dict) -> int:
    """A name for one case's copies: jobs run two at a time and must not share a head."""
    return abs(hash(json.dumps(params, default=str)))


def _run(job):
    name, params, folder = job
    key = _tag(params)
    head, first = _head(name, folder, f"_{key}")
    try:
        pm.execute_notebook(str(head), str(folder / f"{name}_{key}.ipynb"),
                            parameters=params, kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                            log_output=False)
        return None, first
    except pm.PapermillExecutionError as e:
        return e, first


def _run_here(job):
    """The same cells as :func:`_run` (papermill's injected parameters cell included), executed in this
    process: ``(SimpleNamespace(ename, evalue, cell_index) or None, index of the first code cell)``."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    name, params, folder = job
    head, first = _head(name, folder, f"_here_{_tag(params)}")
    nb = parameterize_notebook(load_notebook_node(str(head)), params, kernel_name="python3")  # as execute_notebook
    namespace: dict = {}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        try:
            exec(compile("".join(cell["source"]), f"<{name} cell {i}>", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - what the kernel would report
            return SimpleNamespace(ename=type(e).__name__, evalue=str(e), cell_index=i), first
    return None, first


@pytest.fixture(scope="module")
def papermill_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("params")
    kernel, here = {}, {}
    for name, kind, param, value, _ in PAPERMILL:
        out = str(folder / f"out_{name}")
        job = (name, {**PROFILES["smoke"][name], "output_dir": out, param: value}, folder)
        (kernel if kind == "unknown name" else here)[(name, param, json.dumps(value))] = job
    for name in GOOD:
        kernel[(name, "good")] = (name, {**PROFILES["smoke"][name], "output_dir": str(folder / f"good_{name}")}, folder)
    with ThreadPoolExecutor(2) as pool:  # one kernel per core
        runs = dict(zip(kernel, pool.map(_run, kernel.values())))
    return runs | {k: _run_here(job) for k, job in here.items()}


@pytest.mark.parametrize("name, kind, param, value, named", PAPERMILL, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in PAPERMILL])
def test_papermill_stops_in_the_first_code_cell_naming_the_parameter(papermill_runs, name, kind, param, value, named):
    err, first = papermill_runs[(name, param, json.dumps(value))]
    assert err is not None, f"{name} ran with {param}={value!r}"
    assert err.ename == "ValueError" and err.cell_index == first, (err.ename, err.cell_index, err.evalue)
    if kind == "unknown name":
        assert err.evalue.startswith(f"unknown parameter {param!r}; did you mean {named!r}?"), err.evalue
    else:
        assert err.evalue.startswith(f"{named} must be "), err.evalue
        got = "nan" if isinstance(value, float) and math.isnan(value) else repr(value)
        assert err.evalue.endswith(f"got {got}"), err.evalue
    if kind == "unknown name":  # a kernel run
        assert isinstance(err, pm.PapermillExecutionError) and err.evalue in str(err)  # the message papermill shows


@pytest.mark.parametrize("name", GOOD)
def test_papermill_smoke_parameters_pass_the_first_cell(papermill_runs, name):
    err, _ = papermill_runs[(name, "good")]
    assert err is None, err.evalue
