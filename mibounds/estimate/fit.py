"""Fit one estimator to a fixed set of samples: :func:`estimate_mi` and its result."""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mibounds import _checks
from mibounds.estimate.copula import TCopulaCritic, choose_t_copula, fit_t_copulas
from mibounds.estimate.factory import (
    AUTO_CONCAT_MAX_FEATURES,
    StackedLinear,
    make_critic,
    resolve_auto,
)
from mibounds.estimate.gaussian import (
    GaussianStart,
    JoinedEncoder,
    PlusGaussian,
    fit_gaussian_start,
)
from mibounds.estimate.inputs import _as_samples, _standardize
from mibounds.estimate.registry import CriticEstimator, EstimatorSpec, get_estimator
from mibounds.estimate.training import (
    _fit,
    _fit_each,
    _held_out,
    _Single,
    _stackable,
)
from mibounds.nn.critics import SeparableCritic

__all__ = ["MIEstimate", "estimate_mi"]


@dataclass
class MIEstimate:
    """The result of :func:`estimate_mi`.

    **What the interval means.** ``estimate`` is the value of a *bound* on the MI (a lower bound
    for the default estimator), not the MI itself, and ``interval`` is the 95% sampling interval
    of that value: the spread of the bound over the held-out folds. It is **not** a confidence
    interval for the MI. A lower bound sits below the MI by its bias (the critic is not the
    optimal one, and InfoNCE cannot exceed the log of the held-out batch size), and that bias is
    not in the interval, so the interval can lie wholly below the MI. What it does support is a
    one-sided statement: the expected bound is at most the MI, so the MI is at least the
    interval's low end (``mi_limit``) with about 97.5% confidence, to the extent that the fold
    values vary like independent draws. For an upper bound the statement is the mirror one and
    holds only if the variational model is good. The documentation's "Estimating MI from
    samples" page measures both on tasks of known MI.

    Attributes:
        estimate: mean of the bound over the held-out folds (and batches), in nats.
        stderr: standard error of that mean (over the held-out values).
        interval: the 95% normal sampling interval ``(low, high)`` of the held-out mean of the
            bound (see above: not a confidence interval for the MI).
        estimator: the estimator's name.
        kind: ``"lower"`` or ``"upper"``.
        history: the training-batch estimate at every step (mean over the folds' critics).
        eval_values: the bound on each held-out fold (or batch).
        n_train: training samples per fold (validation samples included).
        n_eval: held-out samples, all folds together.
        folds: cross-fitting folds.
        steps_run: for each fold, the training step of the critic that was kept (the best
            validation check with early stopping, else the last step; 0: the starting
            critic, the fitted Gaussian one, was never beaten).
        diverged: training diverged (a non-finite loss or critic output) at every learning
            rate tried; ``estimate`` and ``interval`` are then NaN and ``note`` says so.
        restarts: how many times training restarted with a ten times smaller learning rate
            after diverging.
        dropped_columns: columns of ``x`` and ``y`` left out because they were constant in
            the training split (``{"x": [...], "y": [...]}``).
        gaussian_start: for each fold, whether its kept critic is the one that started from
            the fitted Gaussian critic (empty when none was fitted; see :func:`estimate_mi`).
        t_copula: for each fold, the degrees of freedom of its Student-t copula critic where
            that critic was kept, else ``None`` (empty when none was fitted).
        note: why the interval is not finite, or what was changed; empty otherwise.

    Example:
        >>> import torch
        >>> x = torch.randn(1000, 2)
        >>> r = estimate_mi(x, x + 0.1 * torch.randn(1000, 2), steps=5, progress=False)
        >>> type(r).__name__, r.kind, len(r.history), r.folds
        ('MIEstimate', 'lower', 5, 5)
    """

    estimate: float
    stderr: float
    interval: tuple[float, float]
    estimator: str
    kind: str
    history: list[float] = field(repr=False)
    eval_values: list[float] = field(repr=False)
    n_train: int = 0
    n_eval: int = 0
    folds: int = 1
    steps_run: list[int] = field(default_factory=list)
    diverged: bool = False
    restarts: int = 0
    dropped_columns: dict[str, list[int]] = field(default_factory=dict)
    gaussian_start: list[bool] = field(default_factory=list)
    t_copula: list[float | None] = field(default_factory=list)
    note: str = ""

    @property
    def mi_limit(self) -> float:
        """The one-sided confidence limit on the MI the bound supports: the interval's low end
        for a lower bound (the MI is at least this), its high end for an upper bound (at
        most this, if the variational model is good)."""
        return self.interval[0] if self.kind == "lower" else self.interval[1]

    def __str__(self) -> str:
        lo, hi = self.interval
        side = ">=" if self.kind == "lower" else "<="
        text = (
            f"{self.estimator}, a {self.kind} bound on the MI: {self.estimate:.4f} nats "
            f"+- {self.stderr:.4f} (the bound's 95% sampling interval {lo:.4f} .. {hi:.4f}; "
            f"MI {side} {self.mi_limit:.4f})"
        )
        return f"{text}; {self.note}" if self.note else text


def estimate_mi(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    estimator: str | EstimatorSpec = "infonce-sym",
    critic: str | nn.Module = "auto",
    *,
    folds: int = 5,
    steps: int = 5000,
    batch_size: int | None = None,
    lr: float | None = None,
    patience: int | None = 5,
    check_every: int = 100,
    val_fraction: float = 0.2,
    eval_fraction: float | None = None,
    eval_batch_size: int | None = None,
    hidden: int | None = None,
    embed: int | None = None,
    standardize: bool | str = "auto",
    gaussian_start: bool | str = "auto",
    t_copula: bool | str = "auto",
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    max_seconds: float | None = None,
) -> MIEstimate:
    r"""Estimate :math:`I(X;Y)` from paired samples by training a critic.

    **Cross-fitting.** The samples are shuffled and cut into ``folds`` equal folds (the
    ``n mod folds`` left over are not used). For every fold a critic is trained on the other
    folds and the bound is evaluated on that fold only, so every sample is held out exactly once
    and no estimate is computed on data its critic was trained on. With the built-in critics
    the ``folds`` critics are trained together in one pass (stacked weights, one batched matmul
    per layer), which is faster than training them one after the other.

    **Early stopping.** Each training part keeps ``val_fraction`` of its samples for
    validation; every ``check_every`` steps the bound is evaluated there, the best critic is
    kept, and training stops once none of the critics improved in ``patience`` checks
    (``patience=None``: train all ``steps`` and keep the last critic).

    **Evaluation.** A critic-based bound is evaluated on the whole held-out fold as one batch
    (all N^2 pairs: the separable critic streams them, a dense critic's scores are formed in
    chunks), unless ``eval_batch_size`` asks for disjoint batches. Mini-batch bounds such as
    InfoNCE cannot exceed :math:`\log N` of the batch they see, so the large held-out batch
    also lifts that cap. The estimate is the mean over folds (and batches); its standard error
    is that of this mean over the fold values.

    **Two critics per fold** (above two coordinates in all, ``gaussian_start``): each fold
    also fits the Gaussian critic of its training part (the log density ratio of a Gaussian
    with its canonical correlations, shrunk on the validation split) and trains a second
    network that starts from it; the fold keeps whichever of its two critics validates better.

    The network's defaults (symmetric InfoNCE, ``critic="auto"``, five folds, early stopping)
    were chosen on seven tasks of bmi's benchmark, the Gaussian start and the normal scores on
    fourteen other tasks of known MI, and both were checked on tasks neither was chosen on; see
    :doc:`/estimate` for the measurements.

    Args:
        x: ``(n, d_x)`` (or ``(n,)``) samples, tensor or numpy array, any device.
        y: ``(n, d_y)`` (or ``(n,)``) samples paired with ``x``.
        estimator: a registered name (see :func:`list_estimators`) or an :class:`EstimatorSpec`.
        critic: ``"auto"``, ``"separable"``, ``"concat"`` (see :func:`make_critic`) or an
            ``nn.Module`` (each fold trains its own copy; the module passed is left as it is).
        folds: cross-fitting folds (>= 2), or 1 for a single split with ``eval_fraction``.
        steps: most training steps (fewer when early stopping ends training).
        batch_size: training batch size (default: 256 for a separable or user critic, 64 for
            a concat critic, at most the training samples).
        lr: Adam learning rate (default: 1e-3, or 3e-3 for a concat critic).
        patience: checks without improvement before training stops; ``None`` turns early
            stopping off.
        check_every: steps between validation checks.
        val_fraction: share of each training part kept for validation, in (0, 1).
        eval_fraction: share held out when ``folds=1`` (default 0.2); with more folds each
            fold holds out ``1 / folds``.
        eval_batch_size: held-out batch size (default: the whole held-out fold for critic-based
            bounds, ``batch_size`` for the variational upper bounds).
        hidden: hidden width of a built-in critic (default: 64 separable, 32 concat).
        embed: embedding size of a built-in separable critic (default: ``max(16, min(d_x,
            d_y))``; the dot product of two ``embed``-vectors has rank ``embed``, and a
            Gaussian pair whose dependence has rank ``min(d_x, d_y)`` needs that many).
        standardize: ``True``: standardise each coordinate with the mean and standard
            deviation of all samples (heavy-tailed ones through ``asinh`` of a robust z-score).
            ``"rank"``: replace each coordinate by its normal score, the standard normal
            quantile of its rank, :math:`\Phi^{-1}((r - 1/2)/n)`, which undoes any increasing
            map of the coordinate (tied values share the mean of their ranks).
            ``"auto"`` (default): ``"rank"`` when ``d_x + d_y > 2`` (where the fitted Gaussian
            critic gains most from normal marginals), ``True`` otherwise.
            ``False``: the values as given. Each is an invertible map per coordinate, so the
            MI is unchanged, and none uses the pairing. See :doc:`/estimate`, "High
            dimensions".
        gaussian_start: ``True``: each fold trains two critics, a plain network and one that
            starts from the Gaussian critic fitted to its training part (canonical
            correlation analysis, shrunk on the validation split; see
            :mod:`mibounds.estimate.gaussian`), and keeps the one with the better validation
            value. ``False``: the plain network only (half the training cost). ``"auto"``
            (default): ``True`` when ``d_x + d_y > 2``. Applies to the built-in critics of the
            critic-based bounds, with early stopping and at most 1024 features per side.
        t_copula: ``True``: each fold also fits the Student-t copula critic of its training
            part (the log density ratio of a multivariate t on t-scores, its degrees of
            freedom and the shrinkage of its cross-dispersion chosen on the validation split;
            see :mod:`mibounds.estimate.copula`) and keeps it instead of its networks when it
            validates better. It follows the shared
            scale of heavy-tailed data (Student-t), which no Gaussian critic does and the
            networks learn slowly; a fold whose likelihood prefers a Gaussian copula fits
            none. It needs no training (a few seconds). ``False``: networks only. ``"auto"``
            (default): ``True`` where ``gaussian_start`` applies and the inputs are normal
            scores (``standardize="rank"``). Held-out folds of more than
            :data:`T_COPULA_MAX_ROWS` samples get none (its scores are dense).
        device: where to train (default: the device of ``x``).
        seed: seed of the folds, the initialisation and the batches.
        progress: a tqdm progress bar: ``None`` (default) on a terminal only, ``True`` always,
            ``False`` never.
        max_seconds: a time budget for training, in seconds (``None``: none). When it is
            spent, training stops at the next step, the critics are checked on the validation
            split once more and the best ones are kept; the result's ``note`` says so. Folds
            trained one after the other share it equally. Less time means a looser (lower)
            bound; ``steps``, ``patience`` and ``folds`` trade time for accuracy too.

    Returns:
        :class:`MIEstimate`.

    Raises:
        TypeError, ValueError: for mismatched or non-float inputs, or too few samples for the
            folds and batch sizes (fewer than 2 held-out samples per fold or 2 training
            samples per critic).

    Warns:
        RuntimeWarning: fewer than 32 held-out samples per fold or 64 training samples per
            critic (``MIN_HELD_OUT``, ``MIN_TRAINING``), naming the numbers (also in
            ``note``): the bound is then dominated by sampling noise.

    Example:
        >>> from mibounds.tasks import CorrelatedGaussian
        >>> x, y = CorrelatedGaussian(2, mi=0.5).sample(2000, torch.Generator().manual_seed(0))
        >>> r = estimate_mi(x, y, progress=False)
        >>> 0.4 < r.estimate < 0.6
        True
    """
    spec = get_estimator(estimator)
    xt, yt = _as_samples("x", x), _as_samples("y", y)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples, got x {tuple(xt.shape)} and "
            f"y {tuple(yt.shape)}"
        )
    _checks.check_positive_int("folds", folds)
    _checks.check_positive_int("steps", steps)
    _checks.check_positive_int("check_every", check_every)
    _checks.check_open_unit("val_fraction", val_fraction)
    if lr is not None:
        _checks.check_positive("lr", lr)
    optional_ints = {"batch_size": (batch_size, 2), "patience": (patience, 1),
                     "eval_batch_size": (eval_batch_size, 2), "hidden": (hidden, 1),
                     "embed": (embed, 1)}  # fmt: skip
    for name, (value, minimum) in optional_ints.items():
        if value is not None:
            _checks.check_positive_int(name, value, minimum=minimum)
    if eval_fraction is not None:
        _checks.check_open_unit("eval_fraction", eval_fraction)
        if folds != 1:
            raise ValueError(
                f"eval_fraction applies to folds=1 only (with folds={folds} each fold holds "
                f"out 1/{folds} of the samples), got eval_fraction={eval_fraction}"
            )
    if not isinstance(gaussian_start, bool) and gaussian_start != "auto":
        raise TypeError(f"gaussian_start must be a bool or 'auto', got {gaussian_start!r}")
    if not isinstance(t_copula, bool) and t_copula != "auto":
        raise TypeError(f"t_copula must be a bool or 'auto', got {t_copula!r}")
    if not isinstance(standardize, bool) and standardize not in ("rank", "auto"):
        raise TypeError(f"standardize must be a bool, 'rank' or 'auto', got {standardize!r}")
    _checks.check_seed("seed", seed)
    if progress is not None:
        _checks.check_bool("progress", progress)
    if max_seconds is not None:
        _checks.check_positive("max_seconds", max_seconds)
    clock = {"budget": max_seconds, "start": time.monotonic(), "hit": False}
    if isinstance(critic, str):
        kind = _checks.check_choice("critic", critic, ("auto", "separable", "concat"))
    elif isinstance(critic, nn.Module):
        kind = "module"
    else:
        raise TypeError(f"critic must be a str or nn.Module, got {type(critic).__name__}")

    n = xt.shape[0]
    dev = _checks.check_device("device", device) if device is not None else xt.device
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    splits = _splits(n, folds, eval_fraction, perm)
    n_train, n_held = len(splits[0][0]), len(splits[0][1])
    n_val = round(n_train * val_fraction) if patience is not None else 0
    n_fit = n_train - n_val
    if n_held < 2 or n_fit < 2:
        raise ValueError(
            f"estimate_mi needs at least 2 held-out samples per fold and 2 training samples per "
            f"critic; n={n} with folds={folds} gives {n_held} and {n_fit}: use more samples or "
            "fewer folds"
        )
    few = ""
    if n_held < MIN_HELD_OUT or n_fit < MIN_TRAINING:
        few = (
            f"n={n} samples with folds={folds} leave {n_held} held-out samples per fold and "
            f"{n_fit} to train each critic (fewer than {MIN_HELD_OUT} or {MIN_TRAINING}): a "
            "bound on so few samples is dominated by noise and its interval cannot be trusted; "
            "use more samples or fewer folds"
        )
        warnings.warn(f"estimate_mi: {few}", RuntimeWarning, stacklevel=2)
    if patience is not None and n_val < 2:
        raise ValueError(
            f"val_fraction={val_fraction} keeps {n_val} of {n_train} training samples for "
            "validation; at least 2 are needed (more samples, a larger val_fraction, or "
            "patience=None)"
        )

    x_dtype, y_dtype = xt.dtype, yt.dtype
    # standardised in float64 (a near-constant column keeps its digits), trained in float32
    x64 = xt.detach().to(device=dev, dtype=torch.float64)
    y64 = yt.detach().to(device=dev, dtype=torch.float64)
    dropped: dict[str, list[int]] = {}
    # more than two coordinates in all: normal scores and the Gaussian start by default (in one
    # dimension the concat critic already follows any dependence)
    several = xt.shape[1] + yt.shape[1] > AUTO_CONCAT_MAX_FEATURES
    if standardize == "auto":
        standardize = "rank" if several else True
    if t_copula is True and standardize != "rank":
        raise ValueError(
            "t_copula=True fits the copula of normal scores: it needs standardize='rank' "
            f"(or 'auto' with more than two coordinates in all), got standardize={standardize!r}"
        )
    if standardize:
        ranks = standardize == "rank"
        x64, dropped["x"] = _standardize("x", x64, x_dtype, ranks)
        y64, dropped["y"] = _standardize("y", y64, y_dtype, ranks)
    xs, ys = x64.float(), y64.float()
    dx, dy = xs.shape[1], ys.shape[1]
    kind = resolve_auto(kind, dx, dy)
    width = hidden if hidden is not None else (32 if kind == "concat" else 64)
    embed = embed if embed is not None else max(16, min(dx, dy))
    bs = batch_size if batch_size is not None else min(64 if kind == "concat" else 256, n_fit)
    if bs > n_fit:
        raise ValueError(
            f"batch_size must be <= the samples each critic trains on ({n_fit} of n={n} with "
            f"folds={folds} and val_fraction={val_fraction}), got {batch_size}"
        )
    if eval_batch_size is not None and eval_batch_size > n_held:
        raise ValueError(
            f"eval_batch_size must be <= the held-out samples per fold ({n_held}), got "
            f"{eval_batch_size}"
        )
    base_lr = lr if lr is not None else (3e-3 if kind == "concat" else 1e-3)
    fit_idx = torch.stack([tr[n_val:] for tr, _ in splits]).to(dev)
    val_idx = torch.stack([tr[:n_val] for tr, _ in splits]).to(dev)
    held_idx = torch.stack([te for _, te in splits]).to(dev)

    def build(members: int | None, fold: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        if isinstance(critic, nn.Module):
            module = copy.deepcopy(critic)
        else:
            module = make_critic(kind, dx, dy, hidden=width, embed=embed, members=members)
            if start is not None:
                module = _started(module, start if members else start.member(fold))
        return spec.build(dx, dy, module).to(dev)

    # the built-in critics of the critic-based bounds: each fold trains two, one from a plain
    # network and one from the fitted Gaussian critic, and keeps the better on validation
    start: GaussianStart | None = None
    wanted = several if gaussian_start == "auto" else gaussian_start
    if wanted and kind != "module" and isinstance(build(None), CriticEstimator):
        start = fit_gaussian_start(xs, ys, fit_idx, val_idx)
    members = len(splits)
    from_gaussian: list[bool] = []  # per fold, once chosen
    kept_t: list[float | None] = []
    # the t copula critics (no training): where the Gaussian start applies, on normal scores
    copulas: list[list[TCopulaCritic]] = []
    t_tables: dict[float, Tensor] = {}
    wanted_t = t_copula if t_copula != "auto" else start is not None
    if (
        wanted_t and standardize == "rank" and kind != "module" and patience is not None
        and isinstance(build(None), CriticEstimator) and spec.kind == "lower"
        and n_held <= T_COPULA_MAX_ROWS and n_val <= T_COPULA_MAX_ROWS
    ):  # fmt: skip
        copulas, t_tables = fit_t_copulas(x64, y64, fit_idx)
    if start is not None:
        start = start.with_plain()
        members *= 2
        fit_idx, val_idx, held_idx = (idx.repeat(2, 1) for idx in (fit_idx, val_idx, held_idx))

    def _described() -> dict[str, Any]:  # what the result says of the run, in every outcome
        return dict(
            estimator=spec.name, kind=spec.kind, n_train=n_train, n_eval=n_held * len(splits),
            folds=len(splits), restarts=restarts, dropped_columns=dropped,
            gaussian_start=from_gaussian, t_copula=kept_t,
        )  # fmt: skip

    # MINE, the upper bounds and user modules cannot be stacked: one fold after the other
    stacked = kind != "module" and _stackable(build(members))
    restarts, step_lr = 0, base_lr
    while True:
        fit = functools.partial(
            _fit, xs=xs, ys=ys, batch_size=bs, lr=step_lr, steps=steps, patience=patience,
            check_every=check_every, eval_batch_size=eval_batch_size,
            gen=torch.Generator().manual_seed(seed + 1), progress=progress, spec=spec,
            clock=clock, started=start is not None,
        )  # fmt: skip
        if stacked:  # all folds at once
            fitted = fit(build(members), fit_idx, val_idx, held_idx, first=restarts == 0)
        else:
            fitted = _fit_each(build, fit, fit_idx, val_idx, held_idx, first=restarts == 0)
        if fitted is not None:
            break
        if restarts == _MAX_RESTARTS:
            warnings.warn(
                f"estimate_mi[{spec.name}]: training diverged (a non-finite loss or critic "
                f"output) at learning rates down to {step_lr:g}; the result is marked diverged",
                RuntimeWarning,
                stacklevel=2,
            )
            return MIEstimate(
                estimate=math.nan, stderr=math.nan, interval=(math.nan, math.nan),
                history=[], eval_values=[], diverged=True,
                note=f"training diverged at every learning rate down to {step_lr:g}",
                **_described(),
            )  # fmt: skip
        restarts += 1
        step_lr = step_lr / 10
    history, held, stopped, best = fitted
    if start is not None:  # per fold, the better of its two critics on validation
        folds_run = len(splits)
        chosen = [k + folds_run if best[k + folds_run] > best[k] else k for k in range(folds_run)]
        held, stopped = [held[k] for k in chosen], [stopped[k] for k in chosen]
        best = [best[k] for k in chosen]
        from_gaussian = [k >= folds_run for k in chosen]
    if any(copulas):  # per fold, a t critic if one validates better than the networks
        kept_t = [None] * len(splits)
        wrapped = spec.build(dx, dy, next(c for fold in copulas for c in fold))
        assert isinstance(wrapped, CriticEstimator)  # the bound, the same for every candidate
        for k, candidates in enumerate(copulas):
            pick = choose_t_copula(candidates, t_tables, val_idx[k], wrapped.loss, best[k])
            if pick is None:
                continue
            model = _Single(spec.build(dx, dy, pick).to(dev))
            out = _held_out(model, xs, ys, held_idx[k : k + 1], eval_batch_size, bs)
            if out is not None:
                held[k], stopped[k], kept_t[k] = out[0], 0, pick.df
                if from_gaussian:
                    from_gaussian[k] = False
    values = [v for member in held for v in member]
    note = few
    if restarts:
        why = f"training diverged and restarted {restarts} time(s); final lr {step_lr:g}"
        note = f"{note}; {why}" if note else why
    if clock["hit"]:
        spent = f"max_seconds={max_seconds:g} was spent after {len(history)} steps"
        note = f"{note}; {spent}" if note else spent
    vals = np.asarray(values)
    mean = float(vals.mean())
    if len(vals) > 1:
        se = float(vals.std(ddof=1) / math.sqrt(len(vals)))
    else:
        se = math.nan
        why = "one held-out batch: no standard error (use more folds or a smaller eval_batch_size)"
        note = f"{note}; {why}" if note else why
    return MIEstimate(
        estimate=mean,
        stderr=se,
        interval=(mean - 1.96 * se, mean + 1.96 * se),
        history=history,
        eval_values=values,
        steps_run=stopped,
        note=note,
        **_described(),
    )


#: Held-out (and validation) samples per fold above which :func:`estimate_mi` fits no t
#: copula critic (its held-out scores are a dense matrix)
T_COPULA_MAX_ROWS = 8192

#: Held-out samples per fold below which :func:`estimate_mi` warns that its bound is
#: dominated by sampling noise (and says so in ``MIEstimate.note``).
MIN_HELD_OUT = 32
#: Training samples per critic below which :func:`estimate_mi` warns likewise.
MIN_TRAINING = 64

#: restarts with a ten times smaller learning rate after training diverges
_MAX_RESTARTS = 2


def _splits(
    n: int, folds: int, eval_fraction: float | None, perm: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """(training, held-out) index pairs: ``folds`` equal folds, or one split for ``folds=1``."""
    if folds == 1:
        n_held = round(n * (0.2 if eval_fraction is None else eval_fraction))
        if not 2 <= n_held <= n - 2:
            raise ValueError(
                f"eval_fraction holds out {n_held} of n={n} samples; both parts need at least "
                f"2, got eval_fraction={eval_fraction}"
            )
        return [(perm[n_held:], perm[:n_held])]
    size = n // folds
    if size < 2:
        raise ValueError(f"folds must leave at least 2 samples per fold (n={n}), got {folds}")
    parts = [perm[k * size : (k + 1) * size] for k in range(folds)]
    return [(torch.cat([parts[j] for j in range(folds) if j != k]), parts[k]) for k in range(folds)]


def _started(critic: nn.Module, start: GaussianStart) -> nn.Module:
    """A built-in critic that starts as the Gaussian critic ``start``: the network's last
    layer (on the y side of a separable critic) is zeroed so its part starts at 0, and the
    Gaussian part is joined to the embeddings (separable) or added to the scores (concat)."""
    side_x, side_y = start.sides()
    if isinstance(critic, SeparableCritic):
        _zero_last_layer(critic.y_encoder, start.active)
        critic.x_encoder = JoinedEncoder(critic.x_encoder, side_x)
        critic.y_encoder = JoinedEncoder(critic.y_encoder, side_y)
        return critic
    _zero_last_layer(critic, start.active)
    return PlusGaussian(critic, side_x, side_y)


def _zero_last_layer(module: nn.Module, members: Tensor) -> None:
    """Zero the last linear layer of ``module`` for the flagged ``members`` (a stacked layer's
    first dimension; a single member's layer whole)."""
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, StackedLinear))][-1]
    with torch.no_grad():
        if isinstance(last, StackedLinear):
            last.weight[members] = 0.0
            last.bias[members] = 0.0
        elif bool(members.all()):
            last.weight.zero_()
            last.bias.zero_()
