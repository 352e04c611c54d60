"""The book says the same on every machine: a build compared with the committed reference metrics."""

import json

import pytest

from equidiff.report import compare as C

REF = {
    "neurons": [{"channel": 10, "concept": "digit 3", "l2_mean": 0.004, "success_rate": 1.0, "n_restarted": 4,
                 "sample_label_histogram": [0, 0, 30, 2], "seconds": 90.0}],
    "shortcut": {"verdict": True, "share": 0.83},
    "fid": 20.0,
    "parameters": {"output_dir": "/somewhere/else", "n_samples": 32},
}


def _copy(d):
    return json.loads(json.dumps(d))


def test_an_identical_record_has_no_difference_and_timings_and_folders_are_ignored():
    got = _copy(REF)
    got["neurons"][0]["seconds"] = 12.0
    got["parameters"]["output_dir"] = "/my/machine/book/_generated/02_neurons"
    assert C.compare_metrics("02_neurons", REF, got) == []


def test_another_choice_is_a_difference_outside_tolerance():
    got = _copy(REF)
    got["neurons"][0]["channel"] = 11
    got["shortcut"]["verdict"] = False
    (a, b) = C.compare_metrics("02_neurons", REF, got)
    assert (a.path, a.reference, a.build, a.within) == ("neurons[0].channel", 10, 11, False)
    assert (b.path, b.reference, b.build, b.within) == ("shortcut.verdict", True, False, False)


@pytest.mark.parametrize("path,value,within", [
    (("shortcut", "share"), 0.83 + 0.05 + 0.25 * 0.83 - 1e-6, True),
    (("shortcut", "share"), 0.83 + 0.05 + 0.25 * 0.83 + 1e-3, False),
    (("fid",), 20.0 * 1.5 + 0.04, True),  # FID: rtol 0.5
    (("fid",), 31.0, False),
    (("fid",), float("nan"), False),
])
def test_floats_within_their_stated_tolerance(path, value, within):
    got = _copy(REF)
    node = got
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    (d,) = C.compare_metrics("x", REF, got)
    assert d.within is within, d.line()


def test_counts_may_move_by_their_tolerance_but_sizes_may_not():
    got = _copy(REF)
    got["neurons"][0]["n_restarted"] = 6  # a count: ± max(2, 15 %)
    got["neurons"][0]["sample_label_histogram"] = [0, 0, 27, 5]  # 30 -> 27 (± 4.5), 2 -> 5 (± 2: outside)
    got["parameters"]["n_samples"] = 33  # a size of the run, not a count of outcomes
    diffs = {d.path: d.within for d in C.compare_metrics("x", REF, got)}
    assert diffs == {"neurons[0].n_restarted": True, "neurons[0].sample_label_histogram[2]": True,
                     "neurons[0].sample_label_histogram[3]": False, "parameters.n_samples": False}


def test_distance_means_are_not_judged_only_where_samples_did_not_converge():
    got = _copy(REF)
    got["neurons"][0]["l2_mean"] = 5.0  # every sample converged: a mean of distances under τ is judged
    (d,) = C.compare_metrics("x", REF, got)
    assert (d.path, d.within) == ("neurons[0].l2_mean", False)
    ref = _copy(REF)
    ref["neurons"][0]["success_rate"] = 0.9  # some samples stopped by the budget set the mean
    got = _copy(ref)
    got["neurons"][0]["l2_mean"] = 5.0
    got["neurons"][0]["success_rate"] = 0.85  # the share itself is still judged (within 0.05 + 25 %)
    diffs = {d.path: (d.within, d.allowed) for d in C.compare_metrics("x", ref, got)}
    assert diffs["neurons[0].l2_mean"] == (True, "tail")
    assert diffs["neurons[0].success_rate"][0] is True
    assert "not judged" in [d for d in C.compare_metrics("x", ref, got) if d.path.endswith("l2_mean")][0].line()


def test_spreads_and_steps_have_their_own_tolerances():
    ref = {"curve": {"std": [0.174, 0.1]}, "steps_median": 14.0, "steps": 100}
    got = {"curve": {"std": [0.03, 0.24]}, "steps_median": 10.0, "steps": 131}
    diffs = {d.path: d.within for d in C.compare_metrics("x", ref, got)}
    assert diffs == {"curve.std[0]": True,  # 0.144 ≤ 0.05 + 100 % of 0.174
                     "curve.std[1]": True,  # 0.14 ≤ 0.05 + 100 % of 0.1
                     "steps_median": True,  # 4 ≤ 30 % of 14
                     "steps": False}  # 31 > 30 % of 100


def test_missing_and_new_keys_and_chapters_are_differences(tmp_path):
    got = _copy(REF)
    del got["fid"]
    got["new"] = 1
    assert {(d.path, d.within) for d in C.compare_metrics("x", REF, got)} == {("fid", False), ("new", False)}
    book, ref = tmp_path / "book", tmp_path / "ref"
    (book / "_generated" / "a").mkdir(parents=True)
    (book / "_generated" / "a" / "metrics.json").write_text(json.dumps(REF))
    (book / "_generated" / "a.done.json").write_text(json.dumps({"profile": "smoke"}))
    ref.mkdir()
    (ref / "b.json").write_text(json.dumps(REF))
    assert {(d.chapter, d.within) for d in C.compare_build(book, reference=ref)} == {("a", False), ("b", False)}


def test_the_command_updates_compares_and_exits_by_verdict(tmp_path, capsys):
    book, ref = tmp_path / "book", tmp_path / "ref"
    (book / "_generated" / "a").mkdir(parents=True)
    (book / "_generated" / "a.done.json").write_text(json.dumps({"profile": "smoke"}))
    (book / "_generated" / "a" / "metrics.json").write_text(json.dumps(REF))
    (ref / "b.json").parent.mkdir(parents=True)
    (ref / "b.json").write_text("{}")  # a chapter this build did not run
    assert C.main(["--book", str(book), "--reference", str(ref), "--update"]) == 0
    assert "output_dir" not in (ref / "a.json").read_text()  # the reference holds no machine path
    assert (ref / "b.json").read_text() == "{}"  # kept, and said so
    assert "written to" in (out := capsys.readouterr().out) and ": a\n" in out and "not in this build): b" in out
    (ref / "b.json").unlink()
    assert C.main(["--book", str(book), "--reference", str(ref)]) == 0
    assert "the build says the same as the reference" in capsys.readouterr().out
    changed = _copy(REF)
    changed["neurons"][0]["concept"] = "digit 8"
    (book / "_generated" / "a" / "metrics.json").write_text(json.dumps(changed))
    assert C.main(["--book", str(book), "--reference", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "neurons[0].concept" in out and "DIFFERS" in out and "1 outside tolerance" in out
    assert C.main(["--book", str(tmp_path / "nothing"), "--reference", str(ref)]) == 2
    assert "build the book first" in capsys.readouterr().err


@pytest.mark.book
def test_the_smoke_build_says_what_the_committed_smoke_reference_says(built_book):
    book, _ = built_book
    diffs = C.compare_build(book, "smoke")
    bad = [d.line() for d in diffs if not d.within]
    assert not bad, "\n".join(bad)


def test_the_books_tolerance_table_is_the_one_the_command_applies():
    from pathlib import Path
    table = Path(__file__).resolve().parent.parent / "book" / "_tables" / "tolerances.md"
    assert table.read_text() == C.tolerance_table()
    assert "max(2, 15 %)" in C.tolerance_table() and "`l2_mean`" in C.tolerance_table()
