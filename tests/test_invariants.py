import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from equidiff.core import objectives as O
from equidiff.core.batched import concat_results, find_invariants_batched
from equidiff.core.filters import lowpass
from equidiff.core.invariants import InvariantConfig, find_invariants, invariant_loss, iterate_invariants
from equidiff.core.priors import IdentityPrior


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).eval()  # objectives refuse train mode
    for p in model.parameters():
        p.requires_grad_(False)
    query = torch.randn(1, 4)
    return O.logits(model, "mlp"), query


@pytest.mark.parametrize("opt,lr", [("adam", 0.05), ("sgd", 0.2)])
def test_loss_goes_down_and_samples_meet_tau(opt, lr):
    obj, q = _setup()
    cfg = InvariantConfig(n_samples=16, steps=400, tau=1e-4, optimizer=opt, lr=lr, seed=1)
    res = find_invariants(obj, q, None, cfg)
    h = res.history["loss_mean"]
    assert h[-1] < h[0] * 1e-2
    assert res.success_rate == 1.0
    # every returned sample is really under τ: recompute from the returned x
    recomputed = ((obj(res.x) - obj(q)) ** 2).sum(1)
    assert torch.all(recomputed < cfg.tau)
    assert torch.allclose(recomputed, res.loss, atol=1e-7)
    assert torch.all(res.steps_to_converge >= 0)


def test_unconverged_samples_are_reported_not_hidden():
    obj, q = _setup()
    cfg = InvariantConfig(n_samples=8, steps=3, tau=1e-9, lr=0.01, seed=0)
    res = find_invariants(obj, q, None, cfg)
    assert not res.converged.all()
    # the budget running out frees no sample: n_active still counts the samples above τ
    assert res.history["n_active"][-1] == int((~res.converged).sum()) > 0
    assert len(res.history["n_active"]) == cfg.steps + 1
    assert torch.all(res.loss[~res.converged] >= cfg.tau)
    assert torch.all(res.steps_to_converge[~res.converged] == -1)
    assert res.summary()["success_rate"] == res.success_rate


def test_frozen_sample_stops_changing():
    obj, q = _setup()
    z0 = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    z0[0] = q[0]  # sample 0 starts on the invariant set: converged at step 0
    cfg = InvariantConfig(n_samples=4, steps=50, tau=1e-6, lr=0.05)
    states = list(iterate_invariants(obj, q, None, cfg, z_init=z0))
    assert not states[0].active[0] and states[0].converged[0]
    res = find_invariants(obj, q, None, cfg, z_init=z0)
    assert torch.equal(res.z[0], z0[0])  # Adam's momentum did not move it
    assert res.steps_to_converge[0] == 0
    assert not torch.equal(res.z[1], z0[1])


def test_batched_equals_one_by_one():
    obj, q = _setup()
    cfg = InvariantConfig(n_samples=6, steps=60, tau=1e-5, lr=0.05, seed=2)
    batch = find_invariants(obj, q, None, cfg)
    for i in range(6):
        one = find_invariants(obj, q, None, InvariantConfig(n_samples=1, steps=60, tau=1e-5, lr=0.05),
                              z_init=batch.z_init[i : i + 1])
        assert torch.allclose(one.z[0], batch.z[i], atol=1e-5)
        assert one.steps_to_converge[0] == batch.steps_to_converge[i]


def test_same_seed_same_result_and_keep_norm():
    obj, q = _setup()
    cfg = InvariantConfig(n_samples=4, steps=20, lr=0.1, seed=5, keep_norm=True)
    a = find_invariants(obj, q, None, cfg)
    b = find_invariants(obj, q, None, cfg)
    assert torch.equal(a.z, b.z)
    assert torch.allclose(a.z.norm(dim=1), a.z_init.norm(dim=1), atol=1e-5)


def test_newton_converges_in_few_steps_on_scalar_objective():
    obj, q = _setup()
    scalar = O.Objective(lambda x: obj(x)[:, :1], "first logit")
    cfg = InvariantConfig(n_samples=32, steps=30, tau=1e-8, optimizer="newton", lr=1.0)
    res = find_invariants(scalar, q, None, cfg)
    assert res.success_rate == 1.0
    assert res.steps_to_converge.max() <= 15
    with pytest.raises(ValueError, match=r"'newton' needs a scalar objective \(m = 1\).*m = 2"):
        find_invariants(obj, q, None, cfg)


def test_lowpass_term_is_added():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1)).eval()
    obj = O.logits(model)
    q = torch.randn(1, 1, 8, 8)
    z0 = torch.randn(2, 1, 8, 8)
    pixels = IdentityPrior((1, 8, 8))  # an image model takes no prior=None (no silent noise images)
    plain = find_invariants(obj, q, pixels, InvariantConfig(n_samples=2, steps=0), z_init=z0)
    dual = find_invariants(obj, q, pixels, InvariantConfig(n_samples=2, steps=0, lowpass_cutoff=0.5), z_init=z0)
    extra = ((obj(lowpass(z0, 0.5)) - obj(q)) ** 2).sum(1)
    assert torch.allclose(dual.loss, plain.loss + extra, atol=1e-5)


def test_nan_loss_names_step_and_samples():
    def fn(x):
        out = x.sum(1, keepdim=True)
        return torch.where(torch.arange(len(x))[:, None] == 1, out / 0 * 0, out)

    obj = O.Objective(fn, "breaks on sample 1")
    with pytest.raises(FloatingPointError, match=r"not finite at step 0 for samples \[1\]"):
        find_invariants(obj, torch.zeros(1, 3), None, InvariantConfig(n_samples=3, steps=5))


def test_resume_after_interruption_gives_same_result(tmp_path):
    obj, q = _setup()
    ck = str(tmp_path / "run.ckpt")
    cfg = InvariantConfig(n_samples=8, steps=80, tau=1e-6, lr=0.05, seed=4, checkpoint_path=ck, checkpoint_every=5)
    full = find_invariants(obj, q, None, InvariantConfig(n_samples=8, steps=80, tau=1e-6, lr=0.05, seed=4))
    for s in iterate_invariants(obj, q, None, cfg):
        if s.step == 23:
            break  # interrupted: the last checkpoint is after step 19
    assert os.path.exists(ck)
    resumed = find_invariants(obj, q, None, cfg)
    assert torch.equal(resumed.z, full.z)
    assert torch.equal(resumed.converged, full.converged)
    assert torch.equal(resumed.steps_to_converge, full.steps_to_converge)
    other = InvariantConfig(n_samples=8, steps=80, tau=1e-6, lr=0.5, seed=4, checkpoint_path=ck, checkpoint_every=5)
    with pytest.raises(ValueError, match=r"written with other settings \(differs in \['lr'\]\)"):
        find_invariants(obj, q, None, other)


def _checkpointed(tmp_path, obj, q, prior=None):
    """A checkpoint of an interrupted run of ``obj`` on ``q`` (written after step 4) and its config."""
    cfg = InvariantConfig(n_samples=4, steps=30, tau=1e-9, lr=0.05, seed=1,
                          checkpoint_path=str(tmp_path / "run.ckpt"), checkpoint_every=5)
    for s in iterate_invariants(obj, q, prior, cfg):
        if s.step == 6:
            break
    assert os.path.exists(cfg.checkpoint_path)
    return cfg


def test_checkpoint_of_another_query_objective_model_or_prior_is_refused(tmp_path):
    """Issue 18: a checkpoint records which run it belongs to; another query (the bug: it returned the
    first query's members as converged), objective, model, prior or start is refused, naming the
    checkpoint_path and what differs, and the same run still resumes."""
    obj, q = _setup()
    cfg = _checkpointed(tmp_path, obj, q)
    ck = cfg.checkpoint_path
    model = obj.model
    torch.manual_seed(1)
    retrained = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).eval()  # same class and shapes, other weights
    cases = [
        ("another query", dict(objective=obj, query=q + 0.5), r"differs in query \(sha256 [0-9a-f]{12}… in the file"),
        ("another objective", dict(objective=O.probabilities(model, "mlp"), query=q),
         r"differs in objective \('logits of mlp' in the file, 'class probabilities of mlp' now\)"),
        ("another model", dict(objective=O.logits(retrained, "mlp"), query=q),
         r"differs in model \(Sequential [0-9a-f]{8} in the file, Sequential [0-9a-f]{8} now\)"),
        ("another prior", dict(objective=obj, query=q, prior=IdentityPrior((4,), scale=2.0)),
         r"differs in prior: settings \(\{.*'scale': 1\.0.*\} in the file, \{.*'scale': 2\.0.*\} now\)"),
        ("another start", dict(objective=obj, query=q, z_init=torch.zeros(4, 4)), r"differs in z_init"),
        ("another target", dict(objective=obj, query=q, target=torch.zeros(1, 2)), r"differs in target y\* = L\(x\*\)"),
    ]
    for what, kw, msg in cases:
        with pytest.raises(ValueError, match=r"checkpoint_path '.*run\.ckpt' belongs to another run, not resumed: it "
                                             + msg) as e:
            find_invariants(kw.pop("objective"), kw.pop("query"), kw.pop("prior", None), cfg, **kw)
        assert "delete the file" in str(e.value), what
    full = find_invariants(obj, q, None, InvariantConfig(n_samples=4, steps=30, tau=1e-9, lr=0.05, seed=1))
    assert torch.equal(find_invariants(obj, q, None, cfg).z, full.z)  # the same run resumes, bitwise
    state = torch.load(ck, weights_only=True)
    del state["identity"]  # a checkpoint of an older equidiff: nothing to check it against
    torch.save(state, ck)
    with pytest.raises(ValueError, match=r"checkpoint_path '.*run\.ckpt' was written by an older equidiff"):
        find_invariants(obj, q, None, cfg)


def test_checkpoint_of_the_circles_model_is_not_resumed_for_another_query(tmp_path):
    """The reproduction of issue 18 on a circles MLP (untrained here: the weights do not matter): query
    (0.7, −0.6) with checkpoint_path P, then (−1.3, 0.6) with the same P must not return the first
    query's members."""
    from equidiff.worlds.circles import CircleMLP

    torch.manual_seed(0)
    obj = O.logits(CircleMLP(8).eval().requires_grad_(False))
    cfg = _checkpointed(tmp_path, obj, torch.tensor([[0.7, -0.6]]))
    with pytest.raises(ValueError, match=r"run\.ckpt' belongs to another run, not resumed: it differs in query"):
        find_invariants(obj, torch.tensor([[-1.3, 0.6]]), None, cfg)


def test_killed_process_resumes(tmp_path):
    """SIGKILL a real process mid-run; a second process resumes to the uninterrupted result."""
    ck = tmp_path / "run.ckpt"
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        from torch import nn
        from equidiff.core import objectives as O
        from equidiff.core.invariants import InvariantConfig, find_invariants, iterate_invariants
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).eval()
        obj, q = O.logits(model), torch.randn(1, 4)
        cfg = InvariantConfig(n_samples=8, steps=80, tau=1e-6, lr=0.05, seed=4,
                              checkpoint_path={str(ck)!r}, checkpoint_every=5)
        if sys.argv[1] == "kill":
            for s in iterate_invariants(obj, q, None, cfg):
                if s.step == 17:
                    os.kill(os.getpid(), signal.SIGKILL)
        res = find_invariants(obj, q, None, cfg)
        ref = find_invariants(obj, q, None, InvariantConfig(n_samples=8, steps=80, tau=1e-6, lr=0.05, seed=4))
        print("SAME" if torch.equal(res.z, ref.z) else "DIFFERENT")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    k = subprocess.run([sys.executable, "-c", script, "kill"], env=env, capture_output=True, text=True)
    assert k.returncode == -9 and ck.exists()
    r = subprocess.run([sys.executable, "-c", script, "resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SAME"


BAD = [
    ("n_samples", 0, "n_samples must be an integer ≥ 1, got 0"),
    ("n_samples", 2.5, "n_samples must be an integer ≥ 1, got 2.5"),
    ("steps", -1, r"steps must be an integer ≥ 0 \(the step budget B\), got -1"),
    ("tau", 0.0, "tau must be a finite number > 0, got 0.0"),
    ("tau", float("nan"), "tau must be a finite number > 0, got nan"),
    ("optimizer", "bfgs", r"optimizer must be one of \('adam', 'sgd', 'newton', 'lbfgs'\), got 'bfgs'"),
    ("lbfgs_memory", 0, "lbfgs_memory must be an integer ≥ 1, got 0"),
    ("lr", -1.0, "lr must be a finite number > 0, got -1.0"),
    ("momentum", 1.0, r"momentum must be a number in \[0, 1\), got 1.0"),
    ("step_size", 0, r"step_size must be a finite number > 0 \(λ\), got 0"),
    ("lowpass_cutoff", 1.5, r"lowpass_cutoff must be None or a number in \(0, 1\] \(fraction of Nyquist\), got 1.5"),
    ("reduction", "max", r"reduction must be one of \('sum', 'mean'\), got 'max'"),
    ("keep_norm", 1, "keep_norm must be True or False, got 1"),
    ("repulsion", -0.1, "repulsion must be a finite number ≥ 0, got -0.1"),
    ("repulsion_scale", 0.0, "repulsion_scale must be a finite number > 0, got 0.0"),
    ("seed", -3, "seed must be an integer ≥ 0, got -3"),
    ("progress", "yes", "progress must be True or False, got 'yes'"),
    ("checkpoint_every", -2, "checkpoint_every must be an integer ≥ 0, got -2"),
    ("checkpoint_every", 5, "checkpoint_path must be a file path when checkpoint_every > 0, got None"),
    ("restart_after", 0, r"restart_after must be None or an integer ≥ 1 \(optimiser steps\), got 0"),
    ("restart_limit", 0, r"restart_limit must be None or an integer ≥ 1 \(optimiser steps\), got 0"),
    ("restart_factor", 1.0, r"restart_factor must be a number > 1 \(a multiple of tau\), got 1.0"),
]


@pytest.mark.parametrize("field,value,message", BAD)
def test_config_rejects_bad_values_with_clear_message(field, value, message):
    with pytest.raises(ValueError, match=message):
        InvariantConfig(**{field: value})


def test_lbfgs_rejects_repulsion():
    with pytest.raises(ValueError, match=r"optimizer must be 'adam' or 'sgd' when repulsion is set"):
        InvariantConfig(optimizer="lbfgs", repulsion=0.5)


def _ill_conditioned():
    """m = 6 linear measurements of a 40-dim x with singular values 1 … 0.01 (condition number 100)."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    v, _ = torch.linalg.qr(torch.randn(40, 6, generator=g))
    a = u @ torch.diag(torch.logspace(0, -2, 6)) @ v.T  # (6, 40)
    obj = O.Objective(lambda x: x @ a.T, "ill-conditioned linear map")
    return obj, torch.randn(1, 40, generator=g)


def test_lbfgs_reaches_tau_where_adam_stalls():
    """The neuron-map situation in miniature: a sum of squares of m ≪ d badly scaled residuals."""
    obj, q = _ill_conditioned()
    common = dict(n_samples=8, steps=60, tau=1e-8, seed=3)
    lb = find_invariants(obj, q, None, InvariantConfig(optimizer="lbfgs", lr=1.0, **common))
    adam = find_invariants(obj, q, None, InvariantConfig(optimizer="adam", lr=0.05, **common))
    assert lb.success_rate == 1.0
    assert adam.success_rate == 0.0 and adam.loss.min() > 1e3 * common["tau"]
    recomputed = ((obj(lb.x) - obj(q)) ** 2).sum(1)
    assert torch.all(recomputed < common["tau"])


def test_lbfgs_samples_are_independent_and_resume_exactly(tmp_path):
    obj, q = _setup()
    cfg = dict(steps=40, tau=1e-10, optimizer="lbfgs", lr=1.0)
    batch = find_invariants(obj, q, None, InvariantConfig(n_samples=5, seed=2, **cfg))
    assert batch.success_rate == 1.0
    for i in (0, 3):
        one = find_invariants(obj, q, None, InvariantConfig(n_samples=1, **cfg), z_init=batch.z_init[i : i + 1])
        assert torch.allclose(one.z[0], batch.z[i], atol=1e-5)
        assert one.steps_to_converge[0] == batch.steps_to_converge[i]
    ck = str(tmp_path / "lbfgs.ckpt")
    resumable = InvariantConfig(n_samples=5, seed=2, checkpoint_path=ck, checkpoint_every=2, **cfg)
    for s in iterate_invariants(obj, q, None, resumable):
        if s.step == 5:
            break  # the last checkpoint holds the L-BFGS history after step 3
    resumed = find_invariants(obj, q, None, resumable)
    assert torch.equal(resumed.z, batch.z)
    assert torch.equal(resumed.steps_to_converge, batch.steps_to_converge)


def test_lbfgs_reports_its_last_accepted_point_not_a_rejected_trial():
    """When the budget ends on a trial step whose loss went up, the result is the accepted point."""
    obj, q = _setup()
    budget, calls = 6, {"n": 0}

    def fn(x):  # the objective, except that the evaluation at the last step is spoiled for sample 0
        out = obj(x)
        if calls["n"] == budget + 1:  # call 0 measures the query; call k + 1 is step k
            out = out + torch.nn.functional.one_hot(torch.tensor([0]), len(out)).T * 100.0
        calls["n"] += 1
        return out

    cfg = InvariantConfig(n_samples=3, steps=budget, tau=1e-12, optimizer="lbfgs", lr=1.0, seed=1)
    states = list(iterate_invariants(O.Objective(fn, "spoiled"), q, None, cfg))
    assert states[-1].loss[0] > 1e3  # the trial step the loop saw last
    calls["n"] = 0
    res = find_invariants(O.Objective(fn, "spoiled"), q, None, cfg)
    before = list(iterate_invariants(obj, q, None, InvariantConfig(**{**cfg.to_dict(), "steps": budget - 1})))
    assert res.loss[0] < 1.0 and torch.isclose(res.loss[0], before[-1].loss[0])  # the accepted point at step B−1
    torch.testing.assert_close(((obj(res.z) - obj(q)) ** 2).sum(1), res.loss)  # z, x and loss agree
    torch.testing.assert_close(res.x, res.z)


def test_newton_rejects_filter():
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd' when lowpass_cutoff"):
        InvariantConfig(optimizer="newton", lowpass_cutoff=0.5)


def test_query_must_be_one_batched_input():
    obj, q = _setup()
    with pytest.raises(ValueError, match=r"query must be one input with a batch dimension, shape \(1, \.\.\.\), got \(4,\)"):
        find_invariants(obj, q[0], None, InvariantConfig(n_samples=2, steps=1))
    with pytest.raises(ValueError, match=r"z_init must hold n_samples=2 latents, got shape \(3, 4\)"):
        find_invariants(obj, q, None, InvariantConfig(n_samples=2, steps=1), z_init=torch.zeros(3, 4))


def test_progress_bar_runs():
    obj, q = _setup()
    res = find_invariants(obj, q, IdentityPrior((4,)), InvariantConfig(n_samples=2, steps=3, progress=True))
    assert len(res.history["loss_mean"]) >= 1


def _dead_zone():
    """L(x) = relu(x_0): a start with x_0 < 0 has zero gradient and never moves (a hopeless start)."""
    obj = lambda x: torch.relu(x[:, :1])  # noqa: E731
    return obj, torch.tensor([[1.0, 0.0]])


@pytest.mark.parametrize("opt,lr", [("sgd", 0.2), ("adam", 0.1), ("lbfgs", 1.0)])
def test_restart_replaces_hopeless_starts(opt, lr, tmp_path):
    obj, q = _dead_zone()
    base = dict(n_samples=16, steps=400, tau=1e-4, optimizer=opt, lr=lr, seed=3)
    plain = find_invariants(obj, q, None, InvariantConfig(**base))
    stuck = plain.z_init[:, 0] < 0
    assert stuck.any() and not plain.converged[stuck].any()  # without restarts they stay stuck
    cfg = InvariantConfig(**base, restart_after=40, restart_factor=100.0)
    res = find_invariants(obj, q, None, cfg)
    assert res.success_rate == 1.0
    assert (res.restarts[stuck] > 0).all() and (res.restarts[~stuck] == 0).all()
    assert (res.z_init[:, 0] > 0).all()  # z_init holds the draw that converged
    assert torch.equal(res.z[~stuck], plain.z[~stuck])  # the others are untouched
    assert res.summary()["n_restarted"] == int(stuck.sum())
    again = find_invariants(obj, q, None, cfg)
    assert torch.equal(again.z, res.z)  # restarts draw reproducible noise
    # resumed from a checkpoint taken after some restarts: the same result
    ck = str(tmp_path / "r.ckpt")
    ccfg = InvariantConfig(**base, restart_after=40, restart_factor=100.0, checkpoint_path=ck, checkpoint_every=10)
    for s in iterate_invariants(obj, q, None, ccfg):
        if s.step == 93:
            break
    resumed = find_invariants(obj, q, None, ccfg)
    assert torch.equal(resumed.z, res.z) and torch.equal(resumed.restarts, res.restarts)


def test_invariant_loss_is_the_loss_of_algorithm_1():
    obj = O.from_function(lambda x: x.flatten(1)[:, :3], "first three pixels")
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    tgt = torch.tensor([[0.1, -0.2, 0.3]])
    plain = ((obj(x) - tgt) ** 2).sum(1)
    assert torch.equal(invariant_loss(obj, x, tgt), plain)
    filt = ((obj(lowpass(x, 0.5)) - tgt) ** 2).sum(1)
    assert torch.equal(invariant_loss(obj, x, tgt, 0.5), plain + filt)
    assert torch.equal(invariant_loss(obj, x, tgt, filter=lambda v: lowpass(v, 0.5)), plain + filt)
    assert torch.equal(invariant_loss(obj, x, tgt, 0.5, measurements=obj(x)), plain + filt)
    assert torch.allclose(invariant_loss(obj, x, tgt, reduction="mean"), plain / 3)
    with pytest.raises(ValueError, match=r"reduction must be 'sum' or 'mean', got 'max'"):
        invariant_loss(obj, x, tgt, reduction="max")
    with pytest.raises(ValueError, match=r"lowpass_cutoff must be None when a filter is given"):
        invariant_loss(obj, x, tgt, 0.5, filter=lambda v: v)
    # Algorithm 1 reports exactly this loss (λ = 1) for what it returns
    res = find_invariants(obj, torch.zeros(1, 1, 8, 8), None, InvariantConfig(n_samples=3, steps=2, lowpass_cutoff=0.5))
    with torch.no_grad():
        assert torch.equal(res.loss, invariant_loss(obj, res.x, res.target, 0.5))


def test_generator_returns_the_result_and_on_step_sees_every_step():
    obj, q = _setup()
    cfg = InvariantConfig(n_samples=4, steps=30, tau=1e-5, lr=0.05, seed=2)
    gen = iterate_invariants(obj, q, None, cfg)
    states = []
    while True:
        try:
            states.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    seen = []
    res = find_invariants(obj, q, None, cfg, on_step=seen.append)
    assert [s.step for s in seen] == [s.step for s in states] == list(range(len(res.history["loss_mean"])))
    assert torch.equal(result.z, res.z) and torch.equal(result.loss, res.loss)
    assert [int(s.active.sum()) for s in seen[:-1]] == res.history["n_active"][:-1]


def test_query_of_the_wrong_shape_names_query_and_the_error():
    obj, _ = _setup()  # an MLP on 4 features
    with pytest.raises(ValueError, match=r"query of shape \(1, 3\) does not fit the objective 'logits of mlp' "
                       r"\(its model's first layer takes \(B, 4\)\): mat1 and mat2 shapes"):
        find_invariants(obj, torch.zeros(1, 3), None, InvariantConfig(n_samples=2, steps=1))


def test_restart_judges_a_start_by_its_best_loss_not_one_bad_evaluation():
    """One evaluation far above restart_factor·τ (as a rejected L-BFGS trial step reads) does not
    throw away a start that already came under it: the rule looks at the best loss since the draw."""
    spike = {"on": False}

    def f(x):  # L(x) = x_0; while spiking: a value of 50 with zero gradient (the SGD step is a no-op)
        return 50.0 + 0 * x[:, :1] if spike["on"] else x[:, :1]

    obj, q = O.Objective(f, "x_0, one spiked evaluation"), torch.tensor([[0.0, 0.0]])
    # (x_0 − 0)² shrinks by 0.96 per SGD step: from 1 it is under 10τ = 1e-3 at step ~170, under τ at ~226
    cfg = InvariantConfig(n_samples=2, steps=400, tau=1e-4, optimizer="sgd", lr=0.01, seed=0,
                          restart_after=200, restart_factor=10.0)
    z0 = torch.tensor([[1.0, 0.0], [0.9, 0.0]])
    seen = []

    def on_step(s):
        spike["on"] = s.step == 204  # step 205 is evaluated spiked, past restart_after
        seen.append(float(s.loss.max()))

    res = find_invariants(obj, q, None, cfg, z_init=z0, on_step=on_step)
    assert seen[205] > cfg.restart_factor * cfg.tau > max(seen[190:205])  # the rule saw the spike ...
    assert (res.restarts == 0).all() and res.converged.all()  # ... and replaced no start


def test_restart_limit_replaces_a_start_that_crawls_towards_tau():
    """restart_limit: a start still above τ after that many steps gets fresh noise, however close it is."""
    obj, q = O.Objective(lambda x: x[:, :1], "x_0"), torch.tensor([[0.0, 0.0]])
    # (x_0)² shrinks by 0.96 per SGD step: from x_0 = 1 it needs ~226 steps to reach τ = 1e-4
    base = dict(n_samples=3, steps=2000, tau=1e-4, optimizer="sgd", lr=0.01, seed=0)
    z0 = torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.01, 0.0]])
    plain = find_invariants(obj, q, None, InvariantConfig(**base), z_init=z0)
    assert plain.converged.all() and (plain.steps_to_converge[:2] > 150).all()
    res = find_invariants(obj, q, None, InvariantConfig(**base, restart_limit=150), z_init=z0)
    assert res.converged.all() and (res.restarts[:2] > 0).all() and res.restarts[2] == 0
    # each restart came exactly 150 steps after the draw before it, and the last draw converged within 150
    assert torch.equal(res.steps_to_converge // 150, res.restarts)
    assert torch.equal(res.steps_to_converge[2], plain.steps_to_converge[2])  # the quick start is untouched


def _stuck_dead_zone():
    """relu(x_0) with starts that stay hopeless: every sample is restarted after each step."""
    obj = O.Objective(lambda x: torch.relu(x[:, :1]), "relu(x_0)")
    cfg = InvariantConfig(n_samples=4, steps=3, tau=1e-4, optimizer="sgd", lr=1e-3, seed=0, restart_after=1)
    return obj, torch.tensor([[5.0, 0.0]]), cfg


def test_batched_restarts_draw_the_noise_of_one_unbatched_run():
    """Restart seeds follow a sample's global index: batches of 2 give the unbatched result."""
    obj, q, cfg = _stuck_dead_zone()
    prior = IdentityPrior((2,))
    whole = find_invariants(obj, q, prior, cfg)
    parts = find_invariants_batched(obj, q, prior, cfg, batch_size=2)
    assert (whole.restarts == cfg.steps).all()  # every sample got fresh noise after every step
    assert torch.equal(parts.restarts, whole.restarts)
    assert torch.equal(parts.z_init, whole.z_init)  # the last draws agree ...
    assert not torch.equal(parts.z_init[0], parts.z_init[2])  # ... and samples i, i + batch_size differ
    torch.testing.assert_close(parts.z, whole.z, rtol=0, atol=1e-6)
    assert torch.equal(parts.converged, whole.converged)
    assert parts.history["n_active"] == whole.history["n_active"]
    assert parts.history["loss_max"] == whole.history["loss_max"]


def test_batched_start_noise_equals_unbatched_and_concat_keeps_history():
    obj, q = _setup()
    cfg = InvariantConfig(n_samples=5, steps=40, tau=1e-5, lr=0.05, seed=7)
    whole = find_invariants(obj, q, None, cfg)
    prior = IdentityPrior((4,))
    parts = find_invariants_batched(obj, q, prior, cfg, batch_size=2)  # batches of 2, 2, 1
    assert torch.equal(parts.z_init, whole.z_init)  # Algorithm 1, line 1: one draw for all samples
    torch.testing.assert_close(parts.z, whole.z, rtol=0, atol=1e-6)
    assert torch.equal(parts.steps_to_converge, whole.steps_to_converge)
    assert parts.history["n_active"] == whole.history["n_active"]
    assert parts.config is cfg and parts.converged.numel() == 5
    assert concat_results([whole]) is whole
    with pytest.raises(ValueError, match="results must hold at least one InvariantResult"):
        concat_results([])
    with pytest.raises(ValueError, match=r"batch_size must be None or an integer ≥ 1, got 0"):
        find_invariants_batched(obj, q, prior, cfg, batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size must be None or ≥ n_samples \(5\) when repulsion > 0"):
        find_invariants_batched(obj, q, prior, InvariantConfig(n_samples=5, repulsion=1.0), batch_size=2)
    with pytest.raises(ValueError, match=r"sample_offset must be an integer ≥ 0"):
        find_invariants(obj, q, None, cfg, sample_offset=-1)
