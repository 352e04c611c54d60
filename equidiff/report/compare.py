"""Compare a build's ``metrics.json`` files against the committed reference of the same profile.

    python -m equidiff.report.compare [--book book] [--profile cpu|smoke] [--update]

The book must say the same on every machine (issue 15). With the shipped weights a build makes the
same *choices* (neurons, features, queries, labels, the shortcut verdict: every string, bool and
identifying integer of a chapter's record) and its measurements agree within the tolerances below.
``book/_reference/<profile>/<chapter>.json`` holds the metrics of a committed reference run;
``--update`` rewrites it from the build (maintainers, after a deliberate change), chapter by chapter:
a chapter the build does not hold keeps its reference. The command prints
every difference, one line each, and exits 1 when any is outside its tolerance.

Tolerances (stated in the README and, from :func:`tolerance_table`, on the book's Performance page):

* strings, bools and integers: equal (the choices and the sizes of the run), except counts of
  samples (keys in :data:`COUNT_KEYS`, and lists of integers such as label histograms) which may
  differ by ``max(COUNT_ATOL, COUNT_RTOL × reference)``;
* floats: ``|build − reference| ≤ FLOAT_ATOL + rtol × |reference|`` with ``rtol`` :data:`FLOAT_RTOL`,
  or the key's own entry in :data:`RTOL` (distances under τ and feature statistics vary more);
* a spread (keys holding ``std``) may move by 100 %: over a few dozen samples one sample moves it
  (one member of 32 at 0 among members at 1 alone makes a standard deviation of 0.17);
* steps to τ (``steps``, ``steps_median``) may move by ``max(COUNT_ATOL, STEPS_RTOL × reference)``;
* the mean and spread of per-sample distances (:data:`TAIL_KEYS`) in a record with unconverged samples
  (``success_rate`` < 1 in either run) are printed but not judged: they are set by the one or two
  samples that did not reach τ, whose final loss is wherever the budget stopped them. Their number
  is judged (``success_rate``, ``n_restarted``), and so is the median distance;
* ``loaded_models``: the same model folders (their names hash the recipe; the sha256 of the smoke
  profile's tiny models, trained on each machine, are not compared);
* wall-clock figures, the run's own folder, the machine and timestamps (:data:`IGNORED`) are not compared.

Checked on two machines with the shipped weights (2026-12-02): the committed cpu reference and a
fresh clone built on another host — both 2-core, 2 torch threads, same library versions, both
reporting "AMD EPYC" — differed in about 400 figures (probably the kernels torch picks and their
rounding on each host; the cause was not isolated), every one within these tolerances once the
applications chapter ranked its queries by log-odds (before, a float32 tie at p = 1 picked
different test digits on the two hosts).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

IGNORED = {"seconds", "train_seconds", "ddpm_train_seconds", "output_dir", "finished", "machine", "wall_seconds"}
COUNT_KEYS = {"n", "n_hits", "n_members", "n_restarted", "n_converged", "members", "sample_classes", "real_classes",
              "steps", "steps_median"}  # outcomes of a run (how many samples converged, restarted, ...)
COUNT_ATOL, COUNT_RTOL = 2, 0.15
FLOAT_ATOL, FLOAT_RTOL = 0.05, 0.25
STEPS_KEYS, STEPS_RTOL = {"steps", "steps_median"}, 0.3  # optimisation steps to τ (trajectories differ by CPU)
RTOL = {"std": 1.0, "fid": 0.5, "fid_real_floor": 0.5, "diversity": 0.3, "l2": 1.0, "l1": 1.0, "kl": 1.0, "loss": 1.0}
TAIL_KEYS = {"l2_mean", "l2_std", "l1_mean", "l1_std"}  # per-sample distance statistics set by unconverged samples


@dataclass
class Difference:
    chapter: str
    path: str
    reference: object
    build: object
    allowed: str
    within: bool

    def line(self) -> str:
        verdict = ("not judged (unconverged samples)" if self.allowed == "tail" else
                   "ok (within tolerance)" if self.within else "DIFFERS")
        return f"{self.chapter:16s} {self.path:60s} reference {self.reference!r:>14} build {self.build!r:>14} " \
               f"allowed {self.allowed:18s} {verdict}"


def _rtol(key: str) -> float:
    for part, tol in RTOL.items():
        if part in key:
            return tol
    return FLOAT_RTOL


def _is_count(key: str) -> bool:
    return key in COUNT_KEYS or "histogram" in key or key.endswith("_counts")


def _count_tolerance(key: str, ref: float) -> float:
    return max(COUNT_ATOL, (STEPS_RTOL if key in STEPS_KEYS else COUNT_RTOL) * abs(ref))


def _unconverged(record: dict) -> bool:
    rate = record.get("success_rate")
    return isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate < 1


def _compare(chapter: str, path: str, key: str, ref, got, out: list[Difference], tail: bool = False) -> None:
    if key in IGNORED or any(key.endswith(s) for s in ("_seconds",)):
        return
    if key == "loaded_models" and isinstance(ref, dict) and isinstance(got, dict):
        # the folders a chapter loaded must be the same (their names hash the recipe); the weights' sha256
        # of the smoke profile's tiny models, trained on each machine, may differ in the last bits
        if sorted(ref) != sorted(got):
            out.append(Difference(chapter, path, sorted(ref), sorted(got), "the same folders", False))
        return
    if isinstance(ref, dict) and isinstance(got, dict):
        tail = _unconverged(ref) or _unconverged(got)
        for k in sorted(set(ref) | set(got)):
            if k in IGNORED or k.endswith("_seconds"):
                continue
            p = f"{path}.{k}" if path else k
            if k not in got:
                out.append(Difference(chapter, p, ref[k], "<missing>", "present", False))
            elif k not in ref:
                out.append(Difference(chapter, p, "<missing>", got[k], "not in reference", False))
            else:
                _compare(chapter, p, k, ref[k], got[k], out, tail)
        return
    if isinstance(ref, list) and isinstance(got, list):
        if len(ref) != len(got):
            out.append(Difference(chapter, path, f"{len(ref)} items", f"{len(got)} items", "same length", False))
            return
        for i, (r, g) in enumerate(zip(ref, got)):
            _compare(chapter, f"{path}[{i}]", key, r, g, out, tail)
        return
    if isinstance(ref, bool) or isinstance(got, bool) or isinstance(ref, str) or isinstance(got, str) \
            or ref is None or got is None:
        if ref != got:
            out.append(Difference(chapter, path, ref, got, "equal", False))
        return
    if isinstance(ref, int) and isinstance(got, int):
        if ref == got:
            return
        if _is_count(key):
            tol = _count_tolerance(key, ref)
            out.append(Difference(chapter, path, ref, got, f"± {tol:g}", abs(got - ref) <= tol))
        else:
            out.append(Difference(chapter, path, ref, got, "equal", False))
        return
    if isinstance(ref, (int, float)) and isinstance(got, (int, float)):
        r, g = float(ref), float(got)
        if r == g or (math.isnan(r) and math.isnan(g)):
            return
        if tail and key in TAIL_KEYS:
            out.append(Difference(chapter, path, ref, got, "tail", True))
            return
        if key in STEPS_KEYS:  # steps medians are floats
            tol = _count_tolerance(key, r)
            out.append(Difference(chapter, path, ref, got, f"± {tol:.3g}", math.isfinite(g) and abs(g - r) <= tol))
            return
        tol = FLOAT_ATOL + _rtol(key) * abs(r)
        out.append(Difference(chapter, path, ref, got, f"± {tol:.3g}", math.isfinite(g) and abs(g - r) <= tol))
        return
    out.append(Difference(chapter, path, ref, got, "same type", False))


def tolerance_table() -> str:
    """The tolerances as a Markdown table (``book/_tables/tolerances.md``, included by the Performance page)."""
    pct = lambda v: f"{100 * v:g} %"  # noqa: E731
    rows = ["| figure | a build may differ from the reference by |", "| --- | --- |",
            "| choices: every string, flag and identifying integer (neurons, features, queries, labels, verdicts) | nothing |",
            f"| counts of outcomes (samples converged or restarted, label histograms) | max({COUNT_ATOL}, {pct(COUNT_RTOL)}) |",
            f"| steps to τ | max({COUNT_ATOL}, {pct(STEPS_RTOL)}) |",
            f"| other numbers | {FLOAT_ATOL:g} + {pct(FLOAT_RTOL)} of the reference |"]
    for key, tol in RTOL.items():
        rows.append(f"| numbers whose name holds `{key}` | {FLOAT_ATOL:g} + {pct(tol)} of the reference |")
    rows.append("| mean and spread of per-sample distances (" + ", ".join(f"`{k}`" for k in sorted(TAIL_KEYS))
                + ") where some samples did not reach τ | not judged (printed) |")
    rows.append("| wall-clock times, folders, the machine | not compared |")
    return "\n".join(rows) + "\n"


def compare_metrics(chapter: str, reference: dict, build: dict) -> list[Difference]:
    """Every difference between a chapter's reference record and a build's (see the module docstring)."""
    out: list[Difference] = []
    _compare(chapter, "", "", reference, build, out)
    return out


def _profile_of(gen: Path) -> str:
    profiles = {json.loads(f.read_text()).get("profile") for f in gen.glob("*.done.json")}
    if len(profiles) != 1:
        raise ValueError(f"profile: the chapters in {gen} ran with profiles {sorted(map(str, profiles))}; "
                         f"pass --profile")
    return profiles.pop()


def compare_build(book: Path, profile: str | None = None, reference: Path | None = None) -> list[Difference]:
    """Compare every chapter of ``<book>/_generated`` with ``<reference>/<chapter>.json`` (default
    ``<repo>/book/_reference/<profile>``); a chapter on one side only is a difference."""
    gen = Path(book) / "_generated"
    if not gen.is_dir():
        raise FileNotFoundError(f"book: {gen} does not exist; build the book first (make book)")
    profile = profile or _profile_of(gen)
    ref_dir = Path(reference) if reference is not None else REPO / "book" / "_reference" / profile
    if not ref_dir.is_dir():
        raise FileNotFoundError(f"reference: {ref_dir} does not exist; there is no committed reference for "
                                f"profile {profile!r} (write one with --update)")
    built = {p.parent.name: p for p in gen.glob("*/metrics.json")}
    refs = {p.stem: p for p in ref_dir.glob("*.json")}
    out: list[Difference] = []
    for name in sorted(set(built) | set(refs)):
        if name not in built:
            out.append(Difference(name, "metrics.json", "present", "<missing>", "present", False))
        elif name not in refs:
            out.append(Difference(name, "metrics.json", "<missing>", "present", "a reference", False))
        else:
            out += compare_metrics(name, json.loads(refs[name].read_text()), json.loads(built[name].read_text()))
    return out


def update_reference(book: Path, profile: str | None = None, reference: Path | None = None) -> tuple[Path, list, list]:
    """Write the build's metrics as the reference of its profile: ``(reference folder, chapters
    written, chapters left as they were)``. Only the chapters the build holds are rewritten, so a
    build of one chapter (``python -m equidiff.build notebooks --only …``) updates that chapter alone;
    the reference of a chapter that no longer exists is deleted by hand."""
    gen = Path(book) / "_generated"
    profile = profile or _profile_of(gen)
    ref_dir = Path(reference) if reference is not None else REPO / "book" / "_reference" / profile
    ref_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in sorted(gen.glob("*/metrics.json")):
        record = json.loads(p.read_text())
        record.get("parameters", {}).pop("output_dir", None)  # the build machine's own folder
        (ref_dir / f"{p.parent.name}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        written.append(p.parent.name)
    kept = sorted(q.stem for q in ref_dir.glob("*.json") if q.stem not in written)
    return ref_dir, written, kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m equidiff.report.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--book", default=str(REPO / "book"), help="book folder holding _generated/")
    ap.add_argument("--profile", default=None, help="cpu or smoke (default: the profile the chapters ran with)")
    ap.add_argument("--reference", default=None, help="reference folder (default book/_reference/<profile>)")
    ap.add_argument("--update", action="store_true", help="write the build's metrics as the reference")
    a = ap.parse_args(argv)
    try:
        if a.update:
            ref_dir, written, kept = update_reference(Path(a.book), a.profile, a.reference)
            print(f"[equidiff] reference written to {ref_dir}: {', '.join(written) or 'no chapter (nothing built)'}")
            if kept:
                print(f"[equidiff] left as they were (not in this build): {', '.join(kept)}")
            return 0
        diffs = compare_build(Path(a.book), a.profile, a.reference)
    except (FileNotFoundError, ValueError) as e:
        print(f"[equidiff] {e}", file=sys.stderr)
        return 2
    bad = [d for d in diffs if not d.within]
    for d in diffs:
        print(d.line())
    print(f"[equidiff] {len(diffs)} difference(s), {len(bad)} outside tolerance"
          + ("" if bad else ": the build says the same as the reference"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
