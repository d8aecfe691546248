"""API fuzzing: every public function, module and CLI sub-command called with generated good,
bad and edge arguments. Each call either raises a TypeError/ValueError/KeyError raised by
mibounds itself whose message names the bad argument, or returns a finite result of the
documented shape and dtype. One bad argument at a time, so the message can be held to it."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mibounds
from mibounds import contrastive
from mibounds import nn as mnn

PACKAGE = str(Path(mibounds.__file__).parent)


@dataclass
class Case:
    """A callable, good values for each argument, bad values for some, and what to check."""

    fn: Callable[..., Any]
    good: dict[str, Callable[[], Any]]
    bad: dict[str, list[Any]] = field(default_factory=dict)
    # the argument named in the message, when it is not the argument's own name
    says: dict[str, str] = field(default_factory=dict)
    check: Callable[[Any, dict[str, Any]], None] | None = None


def _scores(n=5, m=None):
    return lambda: torch.randn(n, n if m is None else m)


def _finite_scalar(out, kw):
    value = out[0] if isinstance(out, tuple) else out
    assert isinstance(value, torch.Tensor) and value.shape == torch.Size([])
    assert bool(torch.isfinite(value)), value


def _bad_scores() -> list[Any]:
    return [
        "scores",
        torch.zeros(4, dtype=torch.int64).reshape(2, 2),
        torch.zeros(2, 2, dtype=torch.bool),
        torch.randn(4),
        torch.randn(1, 1),
        torch.randn(4, 3),
        torch.full((3, 3), float("nan")),
        torch.tensor([[0.0, float("inf")], [1.0, 2.0]]),
    ]


REDUCTION_BAD = ["average", 1, None]
FLAG_BAD = ["no", 1, None, "True"]

CASES: dict[str, Case] = {}
for _name, _fn in {
    "infonce": mibounds.infonce,
    "nwj": mibounds.nwj,
    "tuba": mibounds.tuba,
    "js": mibounds.js,
    "fmi": mibounds.fmi,
}.items():
    CASES[_name] = Case(
        _fn,
        {"scores": _scores(), "reduction": lambda: "mean"},
        {"scores": _bad_scores(), "reduction": REDUCTION_BAD},
        check=_finite_scalar,
    )
CASES["infonce-symmetric"] = Case(
    mibounds.infonce,
    {"scores": _scores(), "symmetric": lambda: True},
    {"symmetric": FLAG_BAD},
    check=_finite_scalar,
)
CASES["dv"] = Case(
    mibounds.dv, {"scores": _scores()}, {"scores": _bad_scores()}, check=_finite_scalar
)
CASES["smile"] = Case(
    mibounds.smile,
    {"scores": _scores(), "clip": lambda: 5.0},
    {"scores": _bad_scores(), "clip": [-1.0, 0.0, "5", float("nan")]},
    check=_finite_scalar,
)
CASES["mine"] = Case(
    mibounds.mine,
    {"scores": _scores(), "log_ema": lambda: torch.zeros(()), "decay": lambda: 0.9},
    {
        "scores": _bad_scores(),
        "log_ema": [torch.zeros(3), torch.zeros(2, 2), "state"],
        "decay": [0.0, 1.0, 1.5, "0.9"],
    },
    check=_finite_scalar,
)
CASES["interpolated"] = Case(
    mibounds.interpolated,
    {"scores": _scores(), "alpha": lambda: 0.5},
    {"scores": _bad_scores(), "alpha": [0.0, 1.0, -0.5, "half"]},
    check=_finite_scalar,
)
CASES["fmi-divergence"] = Case(
    mibounds.fmi,
    {"scores": _scores(), "divergence": lambda: "js"},
    {"divergence": ["not-a-divergence", 3]},
    says={"divergence": "divergence"},
    check=_finite_scalar,
)
CASES["separable-scores"] = Case(
    mibounds.SeparableScores,
    {
        "x": lambda: torch.randn(6, 3),
        "y": lambda: torch.randn(6, 3),
        "similarity": lambda: "cosine",
        "temperature": lambda: 0.5,
        "labels": lambda: None,
        "exclude": lambda: "none",
        "bias": lambda: None,
    },
    {
        "x": ["x", torch.randn(6), torch.zeros(6, 3, dtype=torch.int32), torch.randn(7, 3)],
        "y": [torch.randn(6, 2), torch.randn(3, 3)],
        "similarity": ["euclid", 2],
        "temperature": [0.0, -1.0, "hot", torch.tensor([1.0, 2.0])],
        "labels": [torch.zeros(6), torch.zeros(5, dtype=torch.long), [0, 1]],
        "exclude": ["diag", 1],
        "bias": [torch.zeros(2), "b"],
    },
)
CASES["club"] = Case(
    mibounds.club,
    {
        "mu": lambda: torch.randn(6, 2),
        "logvar": lambda: torch.zeros(6, 2),
        "y": lambda: torch.randn(6, 2),
    },
    {
        "mu": [torch.randn(6, 3), "mu"],
        "logvar": [torch.full((6, 2), -1e4), torch.zeros(3)],
        "y": [torch.randn(6, 3), torch.randn(5, 2)],
    },
    check=_finite_scalar,
)
CASES["variational_upper_bound"] = Case(
    mibounds.variational_upper_bound,
    {"log_conditional": lambda: torch.randn(5), "log_marginal": lambda: torch.randn(5)},
    {"log_conditional": [torch.zeros(0), torch.randn(4), "c"]},
    says={"log_conditional": "log_conditional"},
    check=_finite_scalar,
)
CASES["mlp"] = Case(
    mnn.MLP,
    {"in_dim": lambda: 3, "out_dim": lambda: 2, "hidden": lambda: (4,)},
    {"in_dim": [0, -1, 2.5, "3"], "hidden": [4, "4", (0,), (4.5,)], "out_dim": [0]},
)
CASES["mlp-activation"] = Case(
    mnn.MLP,
    {"in_dim": lambda: 3, "out_dim": lambda: 2, "activation": lambda: torch.nn.ReLU},
    {"activation": ["relu", torch.nn.ReLU(), len]},
)
CASES["concat-critic"] = Case(
    mnn.ConcatCritic,
    {"dim_x": lambda: 3, "dim_y": lambda: 2, "hidden": lambda: (4,)},
    {"dim_x": [0, "3"], "dim_y": [-2], "hidden": [5, ()]},
)
CASES["separable-critic"] = Case(
    mnn.SeparableCritic,
    {"x_encoder": lambda: None, "temperature": lambda: 0.5, "similarity": lambda: "dot"},
    {"x_encoder": ["mlp", 3], "temperature": [0.0, -2.0], "similarity": ["gaussian", "l2"]},
)
CASES["gaussian-conditional"] = Case(
    mnn.GaussianConditional,
    {"dim_x": lambda: 2, "dim_y": lambda: 2, "hidden": lambda: (4,)},
    {"dim_x": [0, -1, "2"], "dim_y": [0], "hidden": [3]},
)
CASES["club-module"] = Case(
    mnn.CLUB,
    {"dim_x": lambda: 2, "dim_y": lambda: 2},
    {"dim_x": [-1, 0]},
)
CASES["infonce-module"] = Case(
    mnn.InfoNCE,
    {"critic": lambda: None, "symmetric": lambda: False, "reduction": lambda: "mean"},
    {"critic": ["critic"], "symmetric": FLAG_BAD, "reduction": REDUCTION_BAD},
)
CASES["fmi-module"] = Case(
    mnn.FMI,
    {"divergence": lambda: "kl"},
    {"divergence": ["nope", 1]},
)
CASES["ntxent"] = Case(
    contrastive.NTXentLoss, {"temperature": lambda: 0.5}, {"temperature": [0.0, -1.0, "t"]}
)
CASES["supcon"] = Case(
    contrastive.SupConLoss, {"temperature": lambda: 0.1}, {"temperature": [0.0, "t"]}
)
CASES["memory-queue"] = Case(
    contrastive.MemoryQueue,
    {"size": lambda: 4, "dim": lambda: 2},
    {"size": [0, -1, 2.5], "dim": [0, "2"]},
)
CASES["clip-call"] = Case(
    lambda image_features, text_features, logit_scale: contrastive.CLIPLoss()(
        image_features, text_features, logit_scale
    ),
    {
        "image_features": lambda: torch.randn(6, 3),
        "text_features": lambda: torch.randn(6, 3),
        "logit_scale": lambda: 5.0,
    },
    {
        "image_features": ["img", torch.randn(6), torch.randn(5, 3)],
        "logit_scale": [0.0, -1.0, "s"],
    },
    check=_finite_scalar,
)
CASES["estimate_mi"] = Case(
    lambda **kw: mibounds.estimate_mi(**kw, steps=1, progress=False),
    {
        "x": lambda: torch.randn(1000, 2),
        "y": lambda: torch.randn(1000, 2),
        "seed": lambda: 0,
        "standardize": lambda: True,
        "gaussian_start": lambda: "auto",
        "device": lambda: "cpu",
    },
    {
        "seed": ["a", 1.5],
        "standardize": ["no", 1],
        "gaussian_start": ["yes", 1, None],
        "device": ["gpu0", "nope", *([] if torch.cuda.is_available() else ["cuda"])],
    },
)
CASES["task-sample"] = Case(
    lambda **kw: mibounds.tasks.CorrelatedGaussian(2, mi=1.0).sample(**kw),
    {"n": lambda: 4, "dtype": lambda: torch.float32, "generator": lambda: None},
    {"n": [0, -1, 2.5], "dtype": [torch.int64, "float32"], "generator": ["g", 0]},
)


def _raised_by_mibounds(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return any(f.filename.startswith(PACKAGE) for f in frames[-3:])


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(data=st.data())
def test_public_api(data):
    name = data.draw(st.sampled_from(sorted(CASES)), label="case")
    case = CASES[name]
    kwargs = {k: make() for k, make in case.good.items()}
    bad_arg = data.draw(st.sampled_from([None, *sorted(case.bad)]), label="bad argument")
    if bad_arg is not None:
        kwargs[bad_arg] = data.draw(st.sampled_from(case.bad[bad_arg]), label="bad value")
    try:
        out = case.fn(**kwargs)
    except (TypeError, ValueError, KeyError) as err:
        assert bad_arg is not None, f"{name}: good arguments raised {err!r}"
        assert _raised_by_mibounds(err), f"{name}: not a mibounds error: {err!r}"
        named = case.says.get(bad_arg, bad_arg)
        assert named in str(err), f"{name}: the message does not name {named!r}: {err}"
        return
    assert bad_arg is None, f"{name}: {bad_arg}={kwargs[bad_arg]!r} was accepted"
    if case.check is not None:
        case.check(out, kwargs)


CLI_BAD = {
    "validate": {
        "--estimators": ["", "nwj,nwj", "nope", "nwj,,dv"],
        "--batch-size": ["1", "0", "-4", "x"],
        "--lr": ["-1", "nan", "0", "inf", "x"],
        "--threads": ["0", "-1"],
        "--levels": ["a,b", "", "-2", "2,,4"],
        "--device": ["nope", *([] if torch.cuda.is_available() else ["cuda"])],
        "--out": ["/nonexistent/dir/x.png", "fig.txt"],
        "--json": ["/nonexistent/dir/r.json"],
        "--steps": ["0"],
        "--dim": ["0"],
        "--transform": ["nope"],
        "--df": ["-1", "nan", "0"],
        "--seed": ["18446744073709551616", "-1", "x"],
    },
    "bench": {
        "--sizes": ["abc", "", "-5", "0", "1", "4,,8"],
        "--dims": ["0", "x"],
        "--dtype": ["int8"],
        "--bounds": ["nope", ""],
        "--methods": ["fast"],
        "--device": ["nope", "meta"],
        "--json": ["/nonexistent/dir/b.json"],
        "--plot": ["/nonexistent/dir/b.png", "b.txt"],
    },
    "check": {"--device": ["nope", "meta"], "--sizes": ["abc", "1"]},
}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_cli_flags(data):
    from mibounds.cli import main

    cmd = data.draw(st.sampled_from(sorted(CLI_BAD)))
    flag = data.draw(st.sampled_from(sorted(CLI_BAD[cmd])))
    value = data.draw(st.sampled_from(CLI_BAD[cmd][flag]))
    with pytest.raises(SystemExit) as exc:
        main([cmd, f"{flag}={value}"])
    assert exc.value.code == 2


# --- the contrastive modules: every bad argument is named as the user passed it ------------


def _contrastive_call(module, arg, bad):
    from mibounds import contrastive as C

    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    queue = torch.nn.functional.normalize(torch.randn(9, 4, generator=g), dim=-1)
    good = {
        "clip": {"image_features": u, "text_features": v, "logit_scale": 10.0},
        "siglip": {"image_features": u, "text_features": v, "logit_scale": 10.0,
                   "logit_bias": -10.0},
        "ntxent": {"out0": u, "out1": v},
        "supcon": {"embeddings": u, "labels": torch.arange(6) % 3},
        "moco": {"query": u, "key": v, "queue": queue},
    }[module]  # fmt: skip
    cls = {"clip": C.CLIPLoss, "siglip": C.SigLIPLoss, "ntxent": C.NTXentLoss,
           "supcon": C.SupConLoss, "moco": C.MoCoLoss}[module]  # fmt: skip
    return cls()(**{**good, arg: bad})


def _bad_features():
    nan = torch.ones(6, 4)
    nan[1, 2] = float("nan")
    return st.sampled_from(
        [nan, torch.ones(6, 4, dtype=torch.long), torch.ones(6), torch.ones(6, 2, 4), "x"]
    )


_BAD_SCALARS = st.sampled_from(
    [float("nan"), float("inf"), 0.0, -1.0, 1e-320, torch.tensor(float("nan")), torch.ones(2), "x"]
)
CONTRASTIVE_ARGS = {
    "clip": {"image_features": _bad_features(), "text_features": _bad_features(),
             "logit_scale": _BAD_SCALARS},
    "siglip": {"image_features": _bad_features(), "logit_scale": _BAD_SCALARS,
               "logit_bias": st.sampled_from([float("nan"), torch.ones(3), "x",
                                              torch.tensor(float("inf"))])},
    "ntxent": {"out0": _bad_features(), "out1": _bad_features()},
    "supcon": {"embeddings": _bad_features(),
               "labels": st.sampled_from([torch.arange(5), torch.ones(6), "x"])},
    "moco": {"query": _bad_features(), "key": _bad_features(),
             "queue": st.sampled_from([torch.full((9, 4), float("nan")), torch.ones(9, 3),
                                       torch.ones(9), "x"])},
}  # fmt: skip


@settings(max_examples=80, deadline=None, derandomize=True)
@given(data=st.data())
def test_contrastive_arguments(data):
    module = data.draw(st.sampled_from(sorted(CONTRASTIVE_ARGS)))
    arg = data.draw(st.sampled_from(sorted(CONTRASTIVE_ARGS[module])))
    bad = data.draw(CONTRASTIVE_ARGS[module][arg])
    with pytest.raises((TypeError, ValueError)) as exc:
        _contrastive_call(module, arg, bad)
    assert arg in str(exc.value), f"{module}({arg}={bad!r}): {exc.value}"
