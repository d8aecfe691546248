"""Fit one estimator to a fixed set of samples: :func:`estimate_mi` and its result."""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mibounds import _checks
from mibounds.estimate.copula import CROSS_SCALES, TCopulaCritic, fit_t_copulas
from mibounds.estimate.factory import (
    AUTO_CONCAT_MAX_FEATURES,
    StackedConcatCritic,
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
from mibounds.estimate.registry import CriticEstimator, EstimatorSpec, get_estimator
from mibounds.nn.critics import ConcatCritic, SeparableCritic

__all__ = ["MIEstimate", "estimate_mi"]


def _as_samples(name: str, value: Any) -> Tensor:
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must hold floating-point values, got dtype {value.dtype}")
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    _checks.check_tensor(name, value, min_dim=1)
    if value.dim() == 1:
        value = value[:, None]
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape (n,) or (n, d), got {tuple(value.shape)}")
    if value.shape[1] == 0:
        raise ValueError(
            f"{name} has no features: shape {tuple(value.shape)}; pass (n,) or (n, d) samples "
            "with d >= 1"
        )
    _checks.check_values(name, value)
    return value


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


def _progress(iterable: Any, enabled: bool | None, desc: str) -> Any:
    """Progress over ``iterable``: ``None`` shows a tqdm bar on a terminal and, elsewhere (a
    log file, a pipe, CI), a plain line on standard output every tenth of the way or every
    :data:`PLAIN_PROGRESS_SECONDS`, whichever comes first; ``True`` always a bar; ``False``
    nothing."""
    if enabled is False:
        return iterable
    if enabled is None and not sys.stderr.isatty():
        return _plain_progress(iterable, desc)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=None if enabled is None else False)


#: Seconds between two plain progress lines at most (see :func:`_progress`).
PLAIN_PROGRESS_SECONDS = 60.0


def _plain_progress(iterable: Any, desc: str) -> Iterator[Any]:
    """``iterable``, printing ``desc: k/total (p%), t s, about r s left`` lines (flushed)."""
    total = len(iterable)
    start = last = time.perf_counter()
    next_share = 0.1
    for k, item in enumerate(iterable, 1):
        yield item
        now = time.perf_counter()
        if k / total >= next_share or now - last >= PLAIN_PROGRESS_SECONDS or k == total:
            while next_share <= k / total:
                next_share += 0.1
            rate = (now - start) / k
            print(
                f"{desc}: {k}/{total} ({100 * k / total:.0f}%), {now - start:.0f} s, "
                f"about {rate * (total - k):.0f} s left",
                flush=True,
            )
            last = now


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
        for k, fold_copulas in enumerate(copulas):
            fold, top, pick = slice(k, k + 1), best[k], None
            # the degrees of freedom and the cross-dispersion's shrinkage, on validation (the
            # whole split as one batch, from the t-scores computed once)
            for copula in fold_copulas:
                t_val = t_tables[copula.df][val_idx[k]]
                for scale in CROSS_SCALES:
                    critic = copula.shrunk(scale)
                    wrapped = spec.build(dx, dy, critic)
                    assert isinstance(wrapped, CriticEstimator)
                    with torch.no_grad():
                        scores = critic.scores_of_t(t_val[:, :dx], t_val[:, dx:])
                        score = -float(wrapped.loss(scores))
                    if math.isfinite(score) and score > top:
                        top, pick = score, critic
            if pick is None:
                continue
            model = _Single(spec.build(dx, dy, pick).to(dev))
            out = _held_out(model, xs, ys, held_idx[fold], eval_batch_size, bs)
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

#: nats by which a validation check must beat the best so far to count as an improvement
#: (smaller gains are within the noise of a validation split of a few hundred samples)
_MIN_IMPROVEMENT = 2e-3


#: what :func:`_fit` returns: the mean training estimate per step, each member's held-out
#: values, the step of each member's kept critic and its validation score (higher is better)
_Fitted = tuple[list[float], list[list[float]], list[int], list[float]]


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


def _stackable(model: nn.Module) -> bool:
    """Whether ``model`` (built on a stacked critic) trains its members independently: a
    critic-based bound whose loss has no state of its own (MINE's moving average would be
    shared between the members)."""
    return isinstance(model, CriticEstimator) and not any(
        m._parameters or m._buffers for m in model.loss.modules()
    )


class _Single(nn.Module):
    """One estimator seen as a stack of one member: ``(1, N, d)`` inputs, ``(1,)`` outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss, est = self.model(x[0], y[0])
        return loss.reshape(1), est.reshape(1)


def _unstacked(model: nn.Module) -> nn.Module:
    """The estimator inside a :class:`_Single` wrapper, or ``model`` itself."""
    return model.model if isinstance(model, _Single) else model


def _fit_each(
    build: Callable[[int | None, int], nn.Module],
    fit: functools.partial[_Fitted | None],
    fit_idx: Tensor,
    val_idx: Tensor,
    held_idx: Tensor,
    first: bool,
) -> _Fitted | None:
    """``fit`` (:func:`_fit` with its settings bound) one member (fold) at a time, each on a
    fresh single critic from ``build(None, member)`` (critics that cannot be stacked)."""
    runs: list[list[float]] = []
    values: list[list[float]] = []
    stopped: list[int] = []
    best: list[float] = []
    folds = fit_idx.shape[0]
    shared = fit.keywords["clock"]
    budget, clock = shared["budget"], shared
    for k in range(folds):
        fold = slice(k, k + 1)
        if budget is not None:  # the folds share the budget equally
            clock = dict(clock, budget=budget / folds, start=time.monotonic())
        out = fit(_Single(build(None, k)), fit_idx[fold], val_idx[fold], held_idx[fold],
                  first=first and k == 0, clock=clock)  # fmt: skip
        shared["hit"] |= clock["hit"]
        if out is None:
            return None
        runs.append(out[0])
        values += out[1]
        stopped += out[2]
        best += out[3]
    # the mean over the folds that ran each step (early stopping ends folds at different steps)
    longest = max(len(r) for r in runs)
    at = [[r[i] for r in runs if i < len(r)] for i in range(longest)]
    history = [sum(v) / len(v) for v in at]
    return history, values, stopped, best


def _fit(
    model: nn.Module,
    fit_idx: Tensor,
    val_idx: Tensor,
    held_idx: Tensor,
    *,
    first: bool,
    xs: Tensor,
    ys: Tensor,
    batch_size: int,
    lr: float,
    steps: int,
    patience: int | None,
    check_every: int,
    eval_batch_size: int | None,
    gen: torch.Generator,
    progress: bool | None,
    spec: EstimatorSpec,
    clock: dict[str, Any],
    started: bool = False,
) -> _Fitted | None:
    """Train the M members of ``model`` (member k on ``fit_idx[k]``, in epochs of disjoint
    batches) with Adam, keep each member's best critic on ``val_idx[k]``, and evaluate it on
    ``held_idx[k]``.

    Returns the mean training estimate per step, the held-out values and the step at which
    each member's kept critic was reached; ``None`` if training diverged (a non-finite loss, or
    a critic whose output is no longer finite, which the bounds refuse with a ValueError). A
    ValueError in the very first step of the ``first`` attempt is the input's fault and is
    raised. With ``started`` (critics that start from the fitted Gaussian critic) the starting
    critics are validated before the first step, and kept unless training beats them."""
    members, n_fit = fit_idx.shape
    rows = torch.arange(members, device=fit_idx.device)[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[float] = []
    best = torch.full((members,), -math.inf)
    best_step = [0] * members
    since = torch.zeros(members, dtype=torch.long)
    kept = _snapshot(model)
    # validation: the whole split as one batch for a separable critic (cheap), batches of 256
    # for anything else (a concat critic costs a network evaluation per pair)
    separable = isinstance(getattr(_unstacked(model), "critic", None), SeparableCritic)
    val_size = val_idx.shape[1] if separable else min(val_idx.shape[1], max(batch_size, 256))
    # higher is better for a lower bound, lower for an upper bound
    sign = 1.0 if spec.kind == "lower" else -1.0
    if started and patience is not None:  # the starting critic is a candidate of its own
        val = _held_out(model, xs, ys, val_idx, val_size, batch_size)
        if val is None:
            return None
        best = sign * torch.tensor([sum(v) / len(v) for v in val])
    order, cursor = fit_idx, n_fit  # no order yet: the first step starts an epoch
    model.train()
    for step in _progress(range(1, steps + 1), progress, f"estimate_mi[{spec.name}]"):
        if cursor + batch_size > n_fit:  # a new epoch: a fresh order for every member
            order, cursor = torch.rand(members, n_fit, generator=gen).argsort(1), 0
        pick = order[:, cursor : cursor + batch_size]
        cursor += batch_size
        idx = fit_idx[rows, pick.to(fit_idx.device)]
        try:
            loss, est = model(xs[idx], ys[idx])
        except ValueError:
            if first and step == 1:
                raise  # the initial critic on the user's data: a real input error
            return None
        if not (bool(torch.isfinite(loss).all()) and bool(torch.isfinite(est).all())):
            return None
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        history.append(float(est.mean()))
        budget = clock["budget"]
        spent = budget is not None and time.monotonic() - clock["start"] >= budget
        if spent:
            clock["hit"] = True
        if patience is None:
            if spent:
                break
            continue
        if step % check_every and step != steps and not spent:
            continue
        val = _held_out(model, xs, ys, val_idx, val_size, batch_size)
        if val is None:
            return None
        score = sign * torch.tensor([sum(v) / len(v) for v in val])
        better = score > best + _MIN_IMPROVEMENT
        if bool(better.any()):
            _keep(kept, model, better)
            best = torch.where(better, score, best)
            for k in torch.nonzero(better).flatten().tolist():
                best_step[k] = step
        since = torch.where(better, 0, since + 1)
        if spent or bool((since >= patience).all()):
            break
    if patience is None:
        best_step = [len(history)] * members
    else:
        # state a loss creates on its first call (MINE's moving average) is not in a snapshot
        # taken before training, and keeps its current value
        model.load_state_dict({**model.state_dict(), **kept})
    held = _held_out(model, xs, ys, held_idx, eval_batch_size, batch_size)
    if held is None:
        return None
    return history, held, best_step, best.tolist()


def _held_out(
    model: nn.Module,
    xs: Tensor,
    ys: Tensor,
    idx: Tensor,
    eval_batch_size: int | None,
    batch_size: int,
) -> list[list[float]] | None:
    """The bound of every member on its samples ``idx[k]``: the whole set as one batch for a
    critic-based bound (unless ``eval_batch_size``), else disjoint batches; ``None`` if a value
    is not finite."""
    model.eval()
    inner = _unstacked(model)
    size = eval_batch_size
    if size is None:
        size = idx.shape[1] if isinstance(inner, CriticEstimator) else min(batch_size, idx.shape[1])
    values: list[list[float]] = [[] for _ in range(idx.shape[0])]
    try:
        with torch.no_grad():
            for start in range(0, idx.shape[1] - size + 1, size):
                part = idx[:, start : start + size]
                if isinstance(inner, CriticEstimator):
                    x_part, y_part = xs[part], ys[part]
                    if inner is not model:  # a single member: its own (N, d) inputs
                        x_part, y_part = x_part[0], y_part[0]
                    scores = _scores(inner.critic, x_part, y_part)
                    est = -inner.loss(scores).reshape(-1)
                else:
                    _, est = model(xs[part], ys[part])
                for k, v in enumerate(est.tolist()):
                    values[k].append(v)
    except ValueError:
        return None
    finally:
        model.train()
    if not all(math.isfinite(v) for member in values for v in member):
        return None
    return values


#: pairs x hidden units per chunk when a dense critic's held-out scores are formed in chunks
_CHUNK_ELEMENTS = 1 << 22


def _scores(critic: nn.Module, x: Tensor, y: Tensor) -> Any:
    """The critic's scores on ``(N, d)`` or stacked ``(M, N, d)`` inputs. A lazy separable
    result is returned as it is; a dense critic is evaluated on row chunks (each score depends
    on its pair only, so this is exact) to bound the memory of its hidden activations."""
    if not isinstance(critic, (ConcatCritic, StackedConcatCritic, PlusGaussian)):
        return critic(x, y)
    n = x.shape[-2]
    members = x.shape[0] if x.dim() == 3 else 1
    width = max((p.shape[-1] for p in critic.parameters() if p.dim() >= 2), default=1)
    rows = max(1, _CHUNK_ELEMENTS // (members * n * width))
    if rows >= n:
        return critic(x, y)
    chunks = [critic(x[..., i : i + rows, :], y) for i in range(0, n, rows)]
    return torch.cat(chunks, dim=-2)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _keep(kept: dict[str, Tensor], model: nn.Module, better: Tensor) -> None:
    """Copy the members flagged in ``better`` into ``kept``: a stacked tensor member by member
    (its first dimension), anything else (a single member) whole."""
    members = better.shape[0]
    for name, value in model.state_dict().items():
        if members > 1 and value.dim() > 0 and value.shape[0] == members:
            kept[name][better.to(value.device)] = value.detach()[better.to(value.device)]
        elif bool(better.all()):  # (called only when some member improved)
            kept[name] = value.detach().clone()


def _standardize(
    name: str, values: Tensor, dtype: torch.dtype, ranks: bool = False
) -> tuple[Tensor, list[int]]:
    """Centre and scale each column by its mean and standard deviation (float64), leaving out
    columns that are constant up to the rounding of ``dtype`` (with a warning; they carry no
    information) and passing heavy-tailed columns through ``asinh`` after a robust scaling
    (median and inter-quartile range); with ``ranks``, each column becomes its normal scores
    instead. Every map is invertible per column, so the MI is unchanged."""
    mean, std = values.mean(0), values.std(0)
    # constant: no spread beyond the rounding of the values themselves in their own dtype
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    tol = 4 * eps * mean.abs().clamp_min(torch.finfo(torch.float64).tiny)
    constant = ~(std > tol)
    dropped = [int(i) for i in torch.nonzero(constant).flatten()]
    if len(dropped) == values.shape[1]:
        raise ValueError(
            f"every column of {name} is constant (standard deviation {std.tolist()}): it "
            "carries no information; the MI with a constant is 0"
        )
    if dropped:
        warnings.warn(
            f"estimate_mi: column(s) {dropped} of {name} are constant; they carry no "
            "information and are left out",
            UserWarning,
            stacklevel=3,
        )
        keep = ~constant
        values, mean, std = values[:, keep], mean[keep], std[keep]
    if ranks:
        return _normal_scores(values), dropped
    z = (values - mean) / std
    # heavy tails (Student-t with few degrees of freedom): a few points far out would dominate
    # the critic's inputs; asinh of a robust z-score keeps them in range
    q = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=values.dtype), dim=0)
    iqr = (q[2] - q[0]).clamp_min(1e-12 * std)
    heavy = (z**4).mean(0) - 3.0 > _HEAVY_TAIL_KURTOSIS
    if bool(heavy.any()):
        z = torch.where(heavy, torch.asinh((values - q[1]) / (iqr / 1.349)), z)
    return z, dropped


def _normal_scores(values: Tensor) -> Tensor:
    """Per column, the standard normal quantile of each value's mid-rank,
    ``Phi^-1((r - 1/2)/n)`` (float64); tied values share the mean of their ranks, so the map
    is strictly increasing in the value."""
    n = values.shape[0]
    out = torch.empty_like(values, dtype=torch.float64)
    for j in range(values.shape[1]):
        _, inverse, counts = torch.unique(values[:, j], return_inverse=True, return_counts=True)
        last = counts.cumsum(0).to(torch.float64)  # rank (from 1) of each distinct value's last
        mid = last - (counts.to(torch.float64) - 1) / 2  # the mean rank of its ties
        out[:, j] = mid[inverse]
    return math.sqrt(2.0) * torch.erfinv(2.0 * (out - 0.5) / n - 1.0)


#: excess kurtosis above which a column counts as heavy-tailed (a Gaussian has 0, Student-t
#: with 5 degrees of freedom 6, and with 4 or fewer it is infinite)
_HEAVY_TAIL_KURTOSIS = 6.0


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
