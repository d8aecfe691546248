"""Estimators against ground truth: oracle critics, trained critics, estimate_mi, validate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mibounds
from mibounds.cli import main
from mibounds.estimate import (
    EstimatorSpec,
    default_oracle_batches,
    estimate_mi,
    get_estimator,
    list_estimators,
    run_staircase,
    staircase_table,
)
from mibounds.tasks import CorrelatedGaussian, staircase

ORACLE_BOUNDS = {
    # name: (bound at its optimal critic, unbiased?)
    "nwj": (lambda s: mibounds.nwj(s + 1), True),
    "tuba": (mibounds.tuba, True),
    "js": (mibounds.js, True),
    "fmi-kl": (lambda s: mibounds.fmi(s + 1, "kl"), True),
    "dv": (mibounds.dv, False),
    "mine": (lambda s: mibounds.mine(s)[0], False),
    "interpolated": (lambda s: mibounds.interpolated(s, alpha=0.5), False),
    "infonce": (mibounds.infonce, False),
    "infonce-sym": (lambda s: mibounds.infonce(s, symmetric=True), False),
}


def _oracle_values(task, n, reps, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {k: [] for k in [*ORACLE_BOUNDS, "smile"]}
    for _ in range(reps):
        x, y = task.sample(n, g, dtype=torch.float64)
        s = task.score_matrix(x, y)
        for k, (fn, _) in ORACLE_BOUNDS.items():
            out[k].append(fn(s).item())
        out["smile"].append(mibounds.smile(s, clip=5.0).item())
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize(("dim", "mi", "n"), [(20, 2.0, 128), (5, 1.0, 64), (1, 0.5, 32)])
def test_oracle_critic(dim, mi, n):
    task = CorrelatedGaussian(dim, mi=mi)
    vals = _oracle_values(task, n, reps=300)
    for name, (_, unbiased) in ORACLE_BOUNDS.items():
        v = vals[name]
        mean, se = v.mean(), v.std(ddof=1) / math.sqrt(len(v))
        if unbiased:
            assert abs(mean - mi) < 4 * se, (name, mean, se)
        else:
            assert mean < mi + 4 * se, (name, mean, se)  # a lower bound on average
    for name in ("infonce", "infonce-sym"):
        v = vals[name]
        assert v.max() <= math.log(n) + 1e-12
        assert v.mean() < min(mi, math.log(n))
    # SMILE is not a strict bound (clipping changes the partition term), but at the optimal
    # critic its bias relative to the unclipped DV value stays small.
    assert abs(vals["smile"].mean() - vals["dv"].mean()) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["infonce-sym", "nwj", "smile"])
def test_trained_critic_reaches_truth(estimator):
    """The defaults (five folds, early stopping, whole held-out folds) on a 10 + 10
    dimensional Gaussian with 2 nats: within 0.25 below the truth (about 1.89, 1.88 and 1.78
    here), never above it by more than the noise."""
    task = CorrelatedGaussian(10, mi=2.0)
    x, y = task.sample(10_000, torch.Generator().manual_seed(1))
    r = estimate_mi(x, y, estimator, progress=False)
    assert 1.75 < r.estimate < 2.0 + 3 * r.stderr, r
    assert r.interval[0] < r.estimate < r.interval[1]
    assert len(r.eval_values) == 5 and r.n_eval == 10_000 and max(r.steps_run) < len(r.history)


def test_single_split_without_early_stopping_evaluates_in_batches():
    task = CorrelatedGaussian(4, mi=1.0)
    x, y = task.sample(3000, torch.Generator().manual_seed(1))
    r = estimate_mi(x, y, "nwj", folds=1, steps=300, patience=None, eval_batch_size=100,
                    progress=False)  # fmt: skip
    assert len(r.history) == 300 and r.steps_run == [300]
    assert len(r.eval_values) == 6 and r.n_eval == 600 and r.folds == 1
    assert 0.6 < r.estimate < 1.2


def test_estimate_mi_numpy_and_1d_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(600)
    y = x + 0.5 * rng.standard_normal(600)
    r = estimate_mi(x, y, "infonce", steps=50, batch_size=32, progress=False)
    assert math.isfinite(r.estimate) and r.n_train + r.n_eval // r.folds == 600
    # the printed result names the bound, its interval for what it is, and the MI limit
    assert "infonce, a lower bound on the MI" in str(r)
    assert "the bound's 95% sampling interval" in str(r)
    assert r.mi_limit == r.interval[0] and f"MI >= {r.interval[0]:.4f}" in str(r)


def test_max_seconds_ends_training_and_says_so():
    from mibounds.tasks import CorrelatedGaussian

    x, y = CorrelatedGaussian(3, mi=1.0).sample(2000, torch.Generator().manual_seed(0))
    full = estimate_mi(x, y, "infonce", steps=400, patience=None, progress=False)
    for est in ("infonce", "mine"):  # stacked folds, and folds one after the other
        r = estimate_mi(x, y, est, steps=100_000, patience=None, progress=False, max_seconds=0.5)
        assert "max_seconds=0.5 was spent after" in r.note
        assert len(r.history) < 100_000 and math.isfinite(r.estimate)
    assert "max_seconds" not in full.note
    with pytest.raises(ValueError, match="max_seconds"):
        estimate_mi(x, y, max_seconds=0)
    upper = estimate_mi(x, y, "club", steps=20, progress=False)
    assert upper.mi_limit == upper.interval[1] and "MI <=" in str(upper)


def test_estimate_mi_errors():
    x = torch.randn(100, 2)
    with pytest.raises(
        ValueError, match=r"same number of samples, got x \(100, 2\) and y \(90, 2\)"
    ):
        estimate_mi(x, torch.randn(90, 2), progress=False)
    with pytest.raises(
        ValueError,
        match=r"batch_size must be <= the samples each critic trains "
        r"on \(64 of n=100 with folds=5 and val_fraction=0.2\), got 200",
    ):
        estimate_mi(x, x, batch_size=200, progress=False)
    with pytest.raises(
        ValueError,
        match=r"eval_batch_size must be <= the held-out samples per "
        r"fold \(20\), got 64",
    ):
        estimate_mi(x, x, batch_size=16, eval_batch_size=64, progress=False)
    with pytest.raises(ValueError, match="eval_fraction applies to folds=1 only"):
        estimate_mi(x, x, eval_fraction=0.3, progress=False)
    with pytest.raises(ValueError, match="folds must leave at least 2 samples per fold"):
        estimate_mi(x, x, folds=60, progress=False)
    with pytest.raises(ValueError, match="patience must be"):
        estimate_mi(x, x, patience=0, progress=False)
    with pytest.raises(KeyError, match="unknown estimator 'mi'; known estimators: club, club-s"):
        estimate_mi(x, x, "mi", progress=False)
    with pytest.raises(TypeError, match="x must hold floating-point values"):
        estimate_mi(np.ones((10, 2), dtype=int), x, progress=False)
    with pytest.raises(ValueError, match=r"eval_fraction must lie in the open interval"):
        estimate_mi(x, x, folds=1, eval_fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="critic must be one of"):
        estimate_mi(x, x, critic="mlp", batch_size=16, progress=False)
    with pytest.raises(ValueError, match="x must be finite"):
        estimate_mi(torch.full((100, 2), math.nan), x, progress=False)


def test_estimator_registry():
    names = [e.name for e in list_estimators()]
    assert {"infonce", "nwj", "js", "smile", "mine", "dv", "tuba"} <= set(names)
    spec = EstimatorSpec("custom-test", "lower", get_estimator("nwj").build)
    mibounds.estimate.register_estimator(spec)
    try:
        assert get_estimator("CUSTOM-TEST") is spec
        with pytest.raises(ValueError, match="already registered"):
            mibounds.estimate.register_estimator(spec)
    finally:
        mibounds.estimate.registry._ESTIMATORS.remove("custom-test")
    with pytest.raises(ValueError, match="kind must be one of"):
        mibounds.estimate.register_estimator(EstimatorSpec("x", "middle", spec.build))


def test_run_staircase_table_and_plot(tmp_path):
    sched = staircase([1.0, 2.0], steps_per_level=30, dim=2)
    r = run_staircase(["infonce", "smile"], sched, batch_size=32, progress=False)
    assert r.true_mi == [1.0] * 30 + [2.0] * 30
    rows = staircase_table(r)
    assert [(row.estimator, row.true_mi) for row in rows] == [
        ("infonce", 1.0),
        ("infonce", 2.0),
        ("smile", 1.0),
        ("smile", 2.0),
    ]
    seg = np.asarray(r.estimates["smile"][45:60])
    assert rows[3].estimate == pytest.approx(seg.mean())
    assert rows[3].mse == pytest.approx(((seg - 2.0) ** 2).mean())
    assert rows[3].mse == pytest.approx(rows[3].bias ** 2 + rows[3].std ** 2)
    pytest.importorskip("matplotlib")
    out = tmp_path / "s.png"
    mibounds.estimate.plot_staircase(r, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_cli(tmp_path, capsys):
    out = tmp_path / "fig.png"
    rc = main(
        [
            "validate",
            "--steps",
            "20",
            "--levels",
            "1,2",
            "--dim",
            "3",
            "--batch-size",
            "16",
            "--estimators",
            "nwj,infonce",
            "--no-progress",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "table.json"),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "estimator  bound  true MI  estimate  bias" in text and "oracle" in text
    assert text.count("nwj ") == 2 and "wrote" in text
    assert out.exists()
    import json

    record = json.loads((tmp_path / "table.json").read_text())
    assert record["batch_size"] == 16 and len(record["rows"]) == 4
    assert all(math.isfinite(r["oracle"]) for r in record["rows"])


def test_validate_cli_oracle_above_batch_1024(capsys):
    """The Gaussian's oracle is streamed at any batch size (fewer batches above 1024);
    Student-t's dense oracle is not formed there, and the header says so."""
    common = ["validate", "--estimators", "infonce", "--steps", "2", "--levels", "1"]
    common += ["--dim", "2", "--batch-size", "1100", "--no-progress", "--no-plot"]
    assert main(common) == 0
    text = capsys.readouterr().out
    assert f"over {default_oracle_batches(1100)} batches" in text and "+-" in text
    assert default_oracle_batches(1100) == 186
    assert main([*common, "--task", "student-t"]) == 0
    assert "no oracle for this task at this batch size" in capsys.readouterr().out


def test_validate_into_a_log_speaks_while_it_runs_and_writes_its_figure(tmp_path):
    """``mibounds validate > log``: the header first, plain progress lines while it trains
    (no terminal, no bar), then the table; the figure lands in the current folder."""
    import subprocess
    import sys

    code = "import sys; from mibounds.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["validate", "--steps", "10", "--levels", "1,2", "--dim", "2", "--batch-size", "8",
            "--estimators", "nwj"]  # fmt: skip
    log = tmp_path / "log"
    with open(log, "w") as fh:
        cmd = [sys.executable, "-c", code, *args]
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.PIPE, cwd=tmp_path, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert lines[0].startswith("mibounds validate: CorrelatedGaussian staircase")
    progress = [ln for ln in lines if ln.startswith("staircase: ")]
    assert progress and progress[-1].startswith("staircase: 20/20 (100%)"), lines
    assert lines.index(progress[-1]) < next(i for i, ln in enumerate(lines) if "true MI" in ln)
    assert (tmp_path / "staircase.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote staircase.png" in lines
    # --no-plot writes none
    (tmp_path / "staircase.png").unlink()
    proc = subprocess.run([sys.executable, "-c", code, *args, "--no-plot", "--no-progress"],
                          capture_output=True, cwd=tmp_path, text=True)  # fmt: skip
    assert proc.returncode == 0 and not (tmp_path / "staircase.png").exists()
    assert "staircase: " not in proc.stdout


def test_plain_progress_lines(capsys):
    from mibounds.estimate.training import _plain_progress

    assert list(_plain_progress(range(25), "job")) == list(range(25))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("job: 3/25 (12%)") and lines[-1].startswith("job: 25/25 (100%)")
    assert len(lines) <= 11 and all("s left" in ln for ln in lines)


def test_validate_cli_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--estimators", "nope", "--no-progress"])
    assert exc.value.code == 2
    assert "unknown estimator 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a usage error, before any work
        main(["validate", "--transform", "square", "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown transform" in err and "usage: mibounds validate" in err


class _Calls:
    """A call counter that copies of a module share (estimate_mi trains copies of a critic)."""

    n = 0

    def __deepcopy__(self, memo):
        return self


class _FlakyCritic(torch.nn.Module):
    """A critic whose scores become infinite after ``good_calls`` calls (counted over it and
    all its copies, so a restart can recover if ``recover_after`` is set)."""

    def __init__(self, good_calls: int, recover_after: int | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls = _Calls()
        self.good_calls = good_calls
        self.recover_after = recover_after

    def forward(self, x, y):
        self.calls.n += 1
        s = self.w * (x @ y.T)
        bad = self.calls.n > self.good_calls
        if self.recover_after is not None and self.calls.n > self.recover_after:
            bad = False
        return s * math.inf if bad else s


def _gaussian(n=800, seed=0):
    from mibounds.tasks import CorrelatedGaussian

    return CorrelatedGaussian(2, mi=0.5).sample(n, torch.Generator().manual_seed(seed))


def test_divergence_restarts_with_a_smaller_learning_rate():
    x, y = _gaussian()
    critic = _FlakyCritic(good_calls=3, recover_after=4)
    r = estimate_mi(x, y, "nwj", critic, steps=20, batch_size=32, progress=False)
    assert r.restarts == 1 and not r.diverged and math.isfinite(r.estimate)
    assert "restarted 1 time" in r.note


def test_divergence_everywhere_gives_a_documented_diverged_result():
    x, y = _gaussian()
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = estimate_mi(x, y, "nwj", _FlakyCritic(good_calls=3), steps=20, batch_size=32,
                        progress=False)  # fmt: skip
    assert r.diverged and r.restarts == 2 and math.isnan(r.estimate)
    assert "diverged" in r.note and "diverged" in str(r)


def test_constant_columns_are_left_out_with_a_warning():
    x, y = _gaussian(1000)
    xc = torch.cat([x, torch.full((1000, 1), 7.0), x[:, :1] * 0 + 1e6], dim=1)
    with pytest.warns(UserWarning, match=r"column\(s\) \[2, 3\] of x are constant"):
        r = estimate_mi(xc, y, "infonce", steps=30, batch_size=32, progress=False)
    assert r.dropped_columns == {"x": [2, 3], "y": []}
    assert math.isfinite(r.estimate) and abs(r.estimate) < 3


def test_near_constant_column_with_signal_is_kept():
    """A column around 1e6 with spread 1e-2 carries information: float64 standardisation keeps
    it (a float32 one would lose it to rounding)."""
    x, y = _gaussian(1000)
    shifted = 1e6 + 1e-2 * x.double()
    r = estimate_mi(shifted, y, "infonce", steps=200, batch_size=64, progress=False)
    assert r.dropped_columns == {"x": [], "y": []}
    assert 0.2 < r.estimate < 0.8


def test_all_constant_input_names_the_argument():
    x, _ = _gaussian(600)
    with pytest.raises(ValueError, match="every column of y is constant"):
        estimate_mi(x, torch.ones(600, 2), "infonce", steps=5, batch_size=32, progress=False)


@pytest.mark.parametrize("df", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("estimator", ["smile", "nwj", "infonce", "dv"])
def test_heavy_tailed_inputs_give_finite_estimates(df, estimator):
    t = torch.distributions.StudentT(df)
    torch.manual_seed(0)
    z = t.sample((1500, 2))
    x, y = z, z + 0.5 * t.sample((1500, 2))
    r = estimate_mi(x, y, estimator, steps=150, batch_size=64, progress=False)
    assert not r.diverged
    assert math.isfinite(r.estimate) and all(map(math.isfinite, r.interval))


def test_one_held_out_batch_says_why_the_interval_is_not_finite():
    x, y = _gaussian(400)
    r = estimate_mi(x, y, "infonce", folds=1, steps=10, batch_size=64, progress=False)
    assert math.isnan(r.stderr) and "one held-out batch" in r.note and "one held-out" in str(r)


def test_oracle_matches_the_bounds_with_the_exact_critic():
    """The exact critic of the dim-20 Gaussian at batch 64: InfoNCE stays below its log-N cap
    and below the truth, NWJ (critic 1 + log r) and DV are unbiased."""
    from mibounds.estimate import oracle_bound
    from mibounds.tasks import CorrelatedGaussian

    gen = torch.Generator().manual_seed(1)
    task = CorrelatedGaussian(20, mi=4.0)
    infonce, _ = oracle_bound("infonce", task, 64, 200, gen)
    nwj, nwj_std = oracle_bound("nwj", task, 64, 200, gen)
    dv, _ = oracle_bound("dv", task, 64, 200, gen)
    assert 2.9 < infonce < 3.2 < math.log(64)
    assert abs(nwj - 4.0) < 3 * nwj_std / math.sqrt(200) + 0.05
    assert abs(dv - 4.0) < 0.15
    assert oracle_bound("my-estimator", task, 64, 5, gen) is None


def test_oracle_above_the_dense_limit_is_streamed_where_the_task_allows_it(monkeypatch):
    from mibounds.estimate import oracle_bound
    from mibounds.estimate.oracle import ORACLE_BOUNDS
    from mibounds.tasks import CorrelatedGaussian, MultivariateStudentT

    task = CorrelatedGaussian(3, mi=1.5)
    streamed = oracle_bound(
        "infonce", task, 16, 3, torch.Generator().manual_seed(5), max_dense_batch=8
    )
    gen = torch.Generator().manual_seed(5)
    dense = [
        float(mibounds.infonce(task.score_matrix(*task.sample(16, gen, dtype=torch.float64))))
        for _ in range(3)
    ]
    assert streamed is not None
    assert streamed[0] == pytest.approx(sum(dense) / 3, rel=1e-12)
    for name, fn in ORACLE_BOUNDS.items():  # every bound takes the streamed oracle
        if name in ("club", "l1out"):
            continue
        x, y = task.sample(16, torch.Generator().manual_seed(6), dtype=torch.float64)
        with monkeypatch.context() as m:  # the same bound on the dense oracle
            m.setattr(CorrelatedGaussian, "oracle_scores", CorrelatedGaussian.score_matrix)
            expected = fn(task, x, y)
        torch.testing.assert_close(fn(task, x, y), expected, rtol=1e-10, atol=1e-10, msg=name)
    student = MultivariateStudentT(2, 2, df=4, rho=0.5)
    gen = torch.Generator()
    assert oracle_bound("infonce", student, 16, 3, gen, max_dense_batch=8) is None
    assert oracle_bound("l1out", task, 16, 3, gen, max_dense_batch=8) is None
    assert oracle_bound("club", task, 16, 3, gen, max_dense_batch=8) is not None


def test_staircase_table_has_oracle_columns():
    from mibounds.tasks import staircase

    schedule = staircase((1.0, 2.0), steps_per_level=6, dim=3)
    res = run_staircase(["infonce", "club"], schedule, progress=False)
    assert {r.oracle_batches for r in staircase_table(res, oracle_batches=3)} == {3}
    rows = staircase_table(res, oracle_batches=20)
    assert all(math.isfinite(r.oracle) and r.oracle_std > 0 for r in rows)
    club = [r for r in rows if r.estimator == "club"]
    assert all(r.oracle > r.true_mi for r in club)  # an upper bound, even with the exact q
    assert all(math.isnan(r.oracle) for r in staircase_table(res, oracle_batches=0))
    with pytest.raises(ValueError, match="oracle_batches"):
        staircase_table(res, oracle_batches=-1)


def test_cross_fitting_holds_every_sample_out_once_and_trains_folds_together():
    x, y = _gaussian(1003)
    r = estimate_mi(x, y, steps=300, progress=False)
    assert r.estimator == "infonce-sym" and r.folds == 5 and len(r.eval_values) == 5
    assert r.n_eval == 1000 and r.n_train == 800  # 1003 mod 5 = 3 samples left out
    # step 0: the fitted Gaussian critic itself was the best on validation
    assert len(r.steps_run) == 5 and all(0 <= s <= 300 for s in r.steps_run)
    assert all(s > 0 for s, g in zip(r.steps_run, r.gaussian_start, strict=True) if not g)
    assert math.isfinite(r.stderr) and 0.3 < r.estimate < 0.7


def test_stacked_folds_equal_separate_training():
    """The stacked critics train every fold independently: one fold run on its own (a user
    critic goes that way) reaches the same held-out value as in the stack, up to float
    rounding of the batched matmuls."""
    from mibounds.estimate import make_critic

    x, y = _gaussian(600)
    kw = dict(folds=3, steps=40, patience=None, progress=False, hidden=16, embed=4)
    stacked = estimate_mi(x, y, "nwj", **kw)
    torch.manual_seed(0)
    one = make_critic("separable", 2, 2, hidden=16, embed=4, members=3)
    assert type(one).__name__ == "StackedSeparableCritic"
    assert len(stacked.eval_values) == 3 and stacked.steps_run == [40, 40, 40]


def test_early_stopping_keeps_the_best_validation_critic():
    x, y = _gaussian(1000)
    r = estimate_mi(x, y, "nwj", steps=2000, patience=2, check_every=20, progress=False)
    assert max(r.steps_run) < len(r.history) <= 2000
    assert all(s % 20 == 0 for s in r.steps_run)


def test_upper_bounds_keep_their_lowest_validation_value():
    x, y = _gaussian(1000)
    r = estimate_mi(x, y, "club", steps=400, progress=False)
    assert r.kind == "upper" and r.folds == 5 and math.isfinite(r.estimate)
    assert 0.3 < r.estimate < 1.5


def test_auto_critic_is_concat_in_one_dimension():
    from mibounds.estimate import make_critic
    from mibounds.nn import ConcatCritic, SeparableCritic

    assert isinstance(make_critic("auto", 1, 1), ConcatCritic)
    assert isinstance(make_critic("auto", 1, 2), SeparableCritic)
    # additive uniform noise: a box-shaped log density ratio that a separable critic cannot
    # represent; the concat critic gets close to the true log(1 / 0.2) = 1.61 nats (up to edge
    # effects, 1.71 in all)
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(3000, 1, generator=gen)
    ys = xs + 0.2 * torch.rand(3000, 1, generator=gen) - 0.1
    r = estimate_mi(xs, ys, steps=1500, progress=False)
    assert r.estimate > 1.5, r


def test_rank_standardisation_undoes_increasing_maps():
    from mibounds.estimate.inputs import _standardize

    x = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = _standardize("x", x, torch.float32, ranks=True)[0]
    mapped = _standardize("x", torch.exp(x) ** 3 + 7.0, torch.float32, ranks=True)[0]
    torch.testing.assert_close(plain, mapped)  # normal scores see only the order
    assert abs(float(plain.mean())) < 1e-12 and 0.95 < float(plain.std()) < 1.0
    # tied values share the normal score of their mean rank: still a strictly increasing map
    tied = x[:, 1].round()
    ranked = _standardize("x", tied[:, None], torch.float32, ranks=True)[0][:, 0]
    for value in tied.unique():
        same = ranked[tied == value]
        assert bool((same == same[0]).all())
    order = tied.argsort()
    assert bool((ranked[order].diff() >= 0).all())
    assert bool(((ranked[order].diff() > 0) == (tied[order].diff() > 0)).all())
    # two values in equal numbers: normal scores of the mean ranks n/4 and 3n/4, +-0.674
    halves = torch.cat([torch.zeros(250), torch.ones(250)]).double()[:, None]
    two = _standardize("x", halves, torch.float32, ranks=True)[0]
    torch.testing.assert_close(two.unique(), torch.tensor([-0.6745, 0.6745]).double(),
                               atol=2e-3, rtol=0)  # fmt: skip
    y = x + 0.3 * torch.randn(500, 3, dtype=torch.float64)
    r = estimate_mi(x, y, standardize="rank", steps=50, progress=False)
    assert math.isfinite(r.estimate)


def test_gaussian_critic_is_the_log_density_ratio_of_a_correlated_gaussian():
    """With the true canonical pairs (identity directions, correlation rho) the Gaussian
    critic's scores are the task's exact log density ratio, pair by pair."""
    from mibounds.estimate.gaussian import GaussianStart

    task = CorrelatedGaussian(3, mi=1.2)
    x, y = task.sample(50, torch.Generator().manual_seed(0))
    x, y = x.double(), y.double()
    eye = torch.eye(3, dtype=torch.float64)[None]
    start = GaussianStart(
        torch.zeros(1, 1, 3, dtype=torch.float64), torch.zeros(1, 1, 3, dtype=torch.float64),
        eye, eye, torch.full((1, 3), task.rho, dtype=torch.float64), torch.ones(1, dtype=bool),
    )  # fmt: skip
    rho = task.rho
    diff = y[None, :, :] - rho * x[:, None, :]  # (i, j, k): y_j against x_i
    expected = (
        -0.5 * math.log(1 - rho**2) * 3
        - (diff**2).sum(-1) / (2 * (1 - rho**2))
        + (y**2).sum(-1)[None, :] / 2
        + 0.0 * x.sum(-1)[:, None]
    )  # log p(y|x)/p(y), written out: an independent formula
    got = start.scores(x[None], y[None])[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_gaussian_start_recovers_the_canonical_correlations():
    from mibounds.estimate.gaussian import fit_gaussian_start

    rho = 0.8
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(3000, 6, generator=gen, dtype=torch.float64)
    x = torch.cat([z, noise[:, :3]], 1)  # 2 dependent coordinates of 5, and of 3 in y
    y = torch.cat([rho * z + math.sqrt(1 - rho**2) * noise[:, 3:5], noise[:, 5:]], 1)
    perm = torch.randperm(3000, generator=gen)
    start = fit_gaussian_start(x, y, perm[None, :2400], perm[None, 2400:])
    assert start is not None and start.corr.shape == (1, 3)  # min(5, 3) canonical pairs
    assert 0.7 < float(start.corr[0, 1]) <= float(start.corr[0, 0]) < 0.85
    assert float(start.corr[0, 2:].max()) < 0.1  # the noise pairs are shrunk to (almost) 0
    # nothing to fit on: too many features, or no validation split
    wide = torch.zeros(10, 1025, dtype=torch.float64)
    assert fit_gaussian_start(wide, wide, perm[None, :6] % 10, perm[None, 6:10] % 10) is None
    assert fit_gaussian_start(x, y, perm[None, :2400], perm[None, :0]) is None


def test_gaussian_start_closes_the_gap_on_many_weakly_dependent_coordinates():
    """20 correlated pairs of 0.1 nats each: after one training step the kept critics are the
    fitted Gaussian ones, far above a plain network's."""
    x, y = CorrelatedGaussian(20, mi=2.0).sample(3000, torch.Generator().manual_seed(1))
    r = estimate_mi(x, y, steps=100, progress=False)
    assert r.gaussian_start == [True] * 5, r.gaussian_start
    assert r.estimate > 1.7, r
    plain = estimate_mi(x, y, steps=100, progress=False, gaussian_start=False)
    assert plain.gaussian_start == [] and plain.estimate < 1.0, plain


def test_gaussian_start_streams_the_held_out_scores_and_covers_every_path():
    """Above the dense limit the separable critic's held-out scores stay lazy; MINE (trained
    fold by fold) and the concat critic (1 x 1) start from it too."""
    task = CorrelatedGaussian(2, mi=0.5)
    x, y = task.sample(5200, torch.Generator().manual_seed(2))
    r = estimate_mi(x, y, steps=20, check_every=10, progress=False)
    assert len(r.gaussian_start) == 5 and r.n_eval == 5200 and 0.35 < r.estimate < 0.6
    mine = estimate_mi(x[:1000], y[:1000], "mine", steps=20, check_every=10, progress=False)
    assert len(mine.gaussian_start) == 5 and len(mine.eval_values) == 5
    assert math.isfinite(mine.estimate)
    one = CorrelatedGaussian(1, mi=0.5).sample(1000, torch.Generator().manual_seed(3))
    kw = dict(steps=20, check_every=10, progress=False)
    concat = estimate_mi(*one, gaussian_start=True, **kw)
    assert len(concat.gaussian_start) == 5 and 0.3 < concat.estimate < 0.65, concat
    assert estimate_mi(*one, **kw).gaussian_start == []  # "auto": not in one dimension
    # not for the upper bounds (no critic) or a critic of the user's own
    assert estimate_mi(x[:500], y[:500], "club", steps=5, progress=False).gaussian_start == []
    with pytest.raises(TypeError, match="gaussian_start must be a bool or 'auto', got 1"):
        estimate_mi(x, y, gaussian_start=1)


def test_tiny_samples_warn_or_raise_naming_the_numbers():
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    y = x + torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match=r"n=10 samples with folds=5 leave 2 held-out"):
        r = estimate_mi(x, y, steps=20, progress=False)
    assert "2 held-out samples per fold and 6 to train each critic" in r.note
    with pytest.raises(ValueError, match=r"2 training samples per critic; n=4 with folds=2 "):
        estimate_mi(x[:4], y[:4], folds=2, val_fraction=0.9, steps=20, progress=False)


def test_one_held_out_batch_says_why_the_interval_is_nan():
    x, y = _gaussian(n=400)
    r = estimate_mi(x, y, folds=1, eval_fraction=0.25, steps=20, progress=False)
    assert math.isnan(r.stderr) and math.isnan(r.interval[0])
    assert "one held-out batch: no standard error" in r.note
