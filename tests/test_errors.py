"""Bad input gets a clear error naming the argument and what was expected and given."""

from __future__ import annotations

import math

import pytest
import torch

import mibounds
from mibounds.nn import FMI, MINE, SMILE, InfoNCE, Interpolated, SeparableCritic

SCORE_FNS = [
    mibounds.infonce,
    mibounds.nwj,
    mibounds.tuba,
    mibounds.dv,
    lambda s: mibounds.mine(s)[0],
    mibounds.js,
    mibounds.smile,
    mibounds.interpolated,
    mibounds.fmi,
]


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_more_rows_than_columns(fn):
    with pytest.raises(ValueError, match=r"scores must be .*got shape \(4, 3\)"):
        fn(torch.randn(4, 3))


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_one_by_one_scores(fn):
    with pytest.raises(ValueError, match=r"scores needs N >= 2 .* got shape \(1, 1\)"):
        fn(torch.randn(1, 1))


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_vector_scores(fn):
    with pytest.raises(ValueError, match=r"at least 2 dimension\(s\), got shape \(4,\)"):
        fn(torch.randn(4))


@pytest.mark.parametrize("fn", SCORE_FNS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_scores(fn, dtype):
    with pytest.raises(TypeError, match=f"scores must have a floating dtype.*got {dtype}"):
        fn(torch.ones(3, 3, dtype=dtype))


@pytest.mark.parametrize("fn", SCORE_FNS)
def test_not_a_tensor(fn):
    with pytest.raises(TypeError, match="scores must be a torch.Tensor, got list"):
        fn([[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("fn", SCORE_FNS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_inf_scores(fn, bad):
    s = torch.randn(3, 3)
    s[1, 2] = bad
    with pytest.raises(ValueError, match="scores must be finite"):
        fn(s)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_the_largest_finite_values_pass_the_value_check(dtype):
    """Values at the edge of the dtype's range are finite: only NaN and Inf are refused."""
    from mibounds import _checks

    top = torch.finfo(dtype).max
    _checks.check_values("x", torch.tensor([top, top, -top], dtype=dtype))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="x must be finite"):
            _checks.check_values("x", torch.tensor([top, bad], dtype=dtype))


def test_value_checks_can_be_switched_off():
    s = torch.randn(3, 3)
    s[0, 0] = math.nan
    mibounds.set_validate_args(False)
    try:
        assert torch.isnan(mibounds.infonce(s))
    finally:
        mibounds.set_validate_args(True)
    with pytest.raises(TypeError, match="value must be a bool"):
        mibounds.set_validate_args(1)  # type: ignore[arg-type]


def test_mismatched_batch_sizes():
    with pytest.raises(ValueError, match=r"M >= N .* got x \(5, 3\) and y \(4, 3\)"):
        mibounds.SeparableScores(torch.randn(5, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"same feature dimension .* x \(4, 3\) and y \(4, 2\)"):
        mibounds.SeparableScores(torch.randn(4, 3), torch.randn(4, 2))
    critic = SeparableCritic(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="M >= N"):
        InfoNCE(critic)(torch.randn(6, 3), torch.randn(4, 3))
    from mibounds.nn import ConcatCritic

    with pytest.raises(ValueError, match="x and y must agree"):
        ConcatCritic(3, 3)(torch.randn(4, 3), torch.randn(6, 3))


def test_separable_scores_bad_args():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="similarity must be one of"):
        mibounds.SeparableScores(x, x, similarity="l2")
    with pytest.raises(ValueError, match="temperature must be > 0, got -1"):
        mibounds.SeparableScores(x, x, temperature=-1)
    with pytest.raises(ValueError, match=r"temperature must be a scalar tensor, got shape \(2,\)"):
        mibounds.SeparableScores(x, x, temperature=torch.ones(2))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        mibounds.SeparableScores(x.long(), x)
    with pytest.raises(ValueError, match="x must be finite"):
        mibounds.SeparableScores(x.clone().fill_(math.nan), x)


@pytest.mark.parametrize("reduction", ["avg", "MEAN", None])
def test_unknown_reduction(reduction):
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\)"):
        mibounds.infonce(torch.randn(3, 3), reduction=reduction)
    with pytest.raises(ValueError, match="reduction must be one of"):
        InfoNCE(reduction=reduction)


def test_unknown_divergence():
    with pytest.raises(KeyError, match="unknown divergence 'kld'; known divergences: gan"):
        mibounds.fmi(torch.randn(3, 3), "kld")
    with pytest.raises(KeyError, match="known divergences"):
        FMI(divergence="kld")


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in the open interval \(0, 1\)"):
        mibounds.interpolated(torch.randn(3, 3), alpha=alpha)
    with pytest.raises(ValueError, match="alpha must lie in the open interval"):
        Interpolated(alpha=alpha)
    with pytest.raises(TypeError, match="alpha must be a real number, got str"):
        mibounds.interpolated(torch.randn(3, 3), alpha="0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize("clip", [-1.0, 0.0])
def test_non_positive_clip(clip):
    with pytest.raises(ValueError, match="clip must be > 0"):
        mibounds.smile(torch.randn(3, 3), clip=clip)
    with pytest.raises(ValueError, match="clip must be > 0"):
        SMILE(clip=clip)


@pytest.mark.parametrize("decay", [0.0, 1.0, 2.0])
def test_mine_decay(decay):
    with pytest.raises(ValueError, match=r"decay must lie in the open interval \(0, 1\)"):
        mibounds.mine(torch.randn(3, 3), decay=decay)
    with pytest.raises(ValueError, match="decay must lie"):
        MINE(decay=decay)


def test_baseline_shape():
    msg = r"log_baseline must broadcast to .* \(3,\), got shape \(4,\)"
    with pytest.raises(ValueError, match=msg):
        mibounds.tuba(torch.randn(3, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"log_ema must broadcast to the batch shape"):
        mibounds.mine(torch.randn(2, 3, 3), torch.zeros(3))


# --- every bad input names the argument (constructors, modules, estimate_mi, pickling) ------

import pickle  # noqa: E402

from mibounds.nn import (  # noqa: E402
    CLUB,
    MLP,
    TUBA,
    ConcatCritic,
    GaussianConditional,
    L1Out,
    update_variational,
)


def test_layer_sizes_and_activations_are_checked():
    with pytest.raises(TypeError, match=r"hidden must be a list or tuple of positive ints"):
        MLP(2, 2, hidden=4)
    with pytest.raises(TypeError, match=r"hidden must be a list or tuple"):
        ConcatCritic(2, 2, hidden=5)
    with pytest.raises(TypeError, match=r"activation must be an nn.Module class"):
        MLP(2, 2, hidden=(4,), activation="relu")
    with pytest.raises(TypeError, match=r"x_encoder must be an nn.Module or None"):
        SeparableCritic("mlp")
    with pytest.raises(TypeError, match=r"baseline must be an nn.Module or None, got str"):
        TUBA(SeparableCritic(), baseline="x")


def test_constructors_name_the_users_argument():
    with pytest.raises(ValueError, match=r"dim_x must be >= 1, got 0"):
        GaussianConditional(0, 2)
    with pytest.raises(ValueError, match=r"dim_x must be >= 1, got -1"):
        CLUB(-1, 2)


def test_feature_sizes_name_the_argument():
    x2, y2 = torch.randn(5, 2), torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"x must have 3 features .* got shape \(5, 2\)"):
        ConcatCritic(3, 1, hidden=(4,))(x2, y2[:, :1])
    with pytest.raises(ValueError, match=r"x must have 3 features .* got shape \(5, 2\)"):
        SeparableCritic(torch.nn.Linear(3, 4))(x2, x2)
    with pytest.raises(ValueError, match=r"x must have 2 features .* got shape \(5, 3\)"):
        CLUB(2, 3)(torch.randn(5, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"y must have 3 features .* got shape \(5, 2\)"):
        L1Out(2, 3)(x2, y2)
    with pytest.raises(ValueError, match=r"y must have 3 features .* got shape \(5, 2\)"):
        CLUB(2, 3).learning_loss(x2, y2)


def test_update_variational_and_club_sample_arguments():
    club = CLUB(2, 2, conditional=GaussianConditional(2, 2, hidden=(4,)))
    x = torch.randn(6, 2)
    with pytest.raises(TypeError, match=r"optimizer must be a torch.optim.Optimizer"):
        update_variational(club, x, x, "adam")
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator"):
        mibounds.club_sample(x, torch.zeros(1), x, generator="x")


def test_estimate_mi_device_and_seed():
    x = torch.randn(1000, 2)
    with pytest.raises(ValueError, match=r"device='gpu0'|device must be a torch device"):
        mibounds.estimate_mi(x, x, device="gpu0", steps=1, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available"):
            mibounds.estimate_mi(x, x, device="cuda", steps=1, progress=False)
    for seed in ("a", 1.5):
        with pytest.raises(TypeError, match=r"seed must be an int"):
            mibounds.estimate_mi(x, x, seed=seed, steps=1, progress=False)
    with pytest.raises(TypeError, match=r"standardize must be a bool, 'rank' or 'auto', got 'no'"):
        mibounds.estimate_mi(x, x, standardize="no", steps=1, progress=False)
    with pytest.raises(TypeError, match=r"gaussian_start must be a bool or 'auto', got 'yes'"):
        mibounds.estimate_mi(x, x, gaussian_start="yes", steps=1, progress=False)


@pytest.mark.parametrize(
    "divergence",
    ["kl", "js", "hellinger", mibounds.tsallis(2.0), "tsallis"],
    ids=["kl", "js", "hellinger", "tsallis(2)", "tsallis"],
)
def test_loss_modules_pickle(divergence, tmp_path):
    loss = mibounds.nn.FMI(divergence=divergence)
    s = torch.randn(5, 5)
    again = pickle.loads(pickle.dumps(loss))
    torch.testing.assert_close(again(s), loss(s))
    torch.save(loss, tmp_path / "loss.pt")
    loaded = torch.load(tmp_path / "loss.pt", weights_only=False)
    torch.testing.assert_close(loaded(s), loss(s))


def test_an_unregistered_divergence_of_lambdas_says_why_it_cannot_pickle():
    kl = mibounds.get_divergence("kl")
    fields = {k: getattr(kl, k) for k in kl.__dataclass_fields__}
    mine = mibounds.FDivergence(**{**fields, "name": "my-kl", "aliases": (), "factory": None})
    with pytest.raises(TypeError, match=r"'my-kl' cannot be pickled: .*register_divergence"):
        pickle.dumps(mine)


def test_silent_wrong_results_are_errors_now():
    s = torch.randn(5, 5)
    with pytest.raises(ValueError, match=r"log_ema must broadcast to the batch shape"):
        mibounds.mine(s, log_ema=torch.zeros(3))
    mu, y = torch.randn(6, 2), torch.randn(6, 2)
    with pytest.raises(ValueError, match=r"logvar must be > -88.7 .* got a minimum of -10000"):
        mibounds.club(mu, torch.full_like(mu, -1e4), y)
    with pytest.raises(ValueError, match=r"need N >= 1 samples"):
        mibounds.variational_upper_bound(torch.zeros(0), torch.zeros(0))
    with pytest.raises(TypeError, match=r"symmetric must be a bool"):
        mibounds.infonce(s, symmetric="no")
    task = mibounds.tasks.CorrelatedGaussian(2, mi=1.0)
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype"):
        task.sample(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"x must have 2 features .* got shape \(4, 3\)"):
        task.score_matrix(torch.randn(4, 3), torch.randn(4, 3))


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "--estimators", ""],
        ["validate", "--estimators", "nwj,nwj"],
        ["validate", "--batch-size", "1"],
        ["validate", "--batch-size", "0"],
        ["validate", "--batch-size", "-4"],
        ["validate", "--device", "nope"],
        ["validate", "--lr", "-1"],
        ["validate", "--lr", "nan"],
        ["validate", "--threads", "0"],
        ["validate", "--out", "/nonexistent/dir/x.png"],
        ["validate", "--levels", "a,b"],
        ["bench", "--sizes", "abc"],
        ["bench", "--sizes="],
        ["bench", "--sizes", "-5"],
        ["bench", "--sizes", "0"],
        ["bench", "--sizes", "1"],
        ["bench", "--dims", "0"],
        ["bench", "--dtype", "int8"],
        ["check", "--device", "nope"],
    ],
    ids=lambda a: " ".join(a),
)
def test_cli_flags_are_argparse_errors(args, capsys):
    from mibounds.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mibounds") and f"argument {args[1].split('=')[0]}" in err


def test_cli_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from mibounds.cli import main

    for cmd in ("validate", "bench", "check"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--device", "cuda"])
        assert exc.value.code == 2
        assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["lightly", "supcon"])
def test_a_temperature_changed_after_construction_is_checked_at_the_call(which):
    from mibounds import contrastive

    z = torch.randn(4, 3)
    if which == "lightly":
        loss = contrastive.NTXentLoss(temperature=torch.tensor(0.5))

        def call():
            return loss(z, z + 0.1)
    else:
        loss = contrastive.SupConLoss(temperature=torch.tensor(0.5))

        def call():
            return loss(z, torch.tensor([0, 0, 1, 1]))

    call()
    loss.temperature = torch.tensor(-1.0)  # e.g. a learnt temperature that went negative
    with pytest.raises(ValueError, match="temperature"):
        call()
