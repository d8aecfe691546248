"""Fit one estimator to a fixed set of samples: :func:`estimate_mi` and its result."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mibounds import _checks
from mibounds.estimate.factory import make_critic
from mibounds.estimate.registry import EstimatorSpec, get_estimator

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
    _checks.check_values(name, value)
    return value


@dataclass
class MIEstimate:
    """The result of :func:`estimate_mi`.

    Attributes:
        estimate: mean of the bound over the held-out batches, in nats.
        stderr: standard error of that mean (over held-out batches).
        interval: a 95% normal interval ``(low, high)`` for the held-out mean.
        estimator: the estimator's name.
        kind: ``"lower"`` or ``"upper"``.
        history: the training-batch estimate at every step.
        eval_values: the bound on each held-out batch.
        n_train: training samples.
        n_eval: held-out samples.
        diverged: training diverged (a non-finite loss or critic output) at every learning
            rate tried; ``estimate`` and ``interval`` are then NaN and ``note`` says so.
        restarts: how many times training restarted with a ten times smaller learning rate
            after diverging.
        dropped_columns: columns of ``x`` and ``y`` left out because they were constant in
            the training split (``{"x": [...], "y": [...]}``).
        note: why the interval is not finite, or what was changed; empty otherwise.

    Example:
        >>> import torch
        >>> x = torch.randn(1000, 2)
        >>> r = estimate_mi(x, x + 0.1 * torch.randn(1000, 2), "infonce", steps=5, progress=False)
        >>> type(r).__name__, r.kind, len(r.history)
        ('MIEstimate', 'lower', 5)
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
    diverged: bool = False
    restarts: int = 0
    dropped_columns: dict[str, list[int]] = field(default_factory=dict)
    note: str = ""

    def __str__(self) -> str:
        lo, hi = self.interval
        text = (
            f"{self.estimator} ({self.kind} bound): {self.estimate:.4f} nats "
            f"+- {self.stderr:.4f} (95% interval {lo:.4f} .. {hi:.4f})"
        )
        return f"{text}; {self.note}" if self.note else text


def _progress(iterable: Any, enabled: bool | None, desc: str) -> Any:
    """A tqdm bar over ``iterable``: ``None`` shows it only on a terminal (never in a pipe or a
    CI log), ``True`` always, ``False`` never."""
    if enabled is False:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=None if enabled is None else False)


def estimate_mi(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    estimator: str | EstimatorSpec = "smile",
    critic: str | nn.Module = "separable",
    *,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 5e-4,
    eval_fraction: float = 0.2,
    eval_batch_size: int | None = None,
    standardize: bool = True,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> MIEstimate:
    r"""Estimate :math:`I(X;Y)` from paired samples by training a critic.

    The samples are split into a training part and a held-out part (``eval_fraction``). The
    estimator is trained with Adam on random training batches (no pair repeats within a batch);
    the reported estimate is the mean of the bound over disjoint held-out batches of
    ``eval_batch_size``, with its standard error and a 95% interval. Mini-batch bounds such as
    InfoNCE and DV depend on the batch size (InfoNCE cannot exceed :math:`\log` of it).

    Args:
        x: ``(n, d_x)`` (or ``(n,)``) samples, tensor or numpy array, any device.
        y: ``(n, d_y)`` (or ``(n,)``) samples paired with ``x``.
        estimator: a registered name (see :func:`list_estimators`) or an :class:`EstimatorSpec`.
        critic: ``"separable"``, ``"concat"`` (see :func:`make_critic`) or an ``nn.Module``.
        steps: training steps.
        batch_size: training batch size.
        lr: Adam learning rate.
        eval_fraction: share of the samples held out, in (0, 1).
        eval_batch_size: held-out batch size (default: ``batch_size``).
        standardize: standardise each coordinate with the training mean and standard deviation
            (an invertible map per coordinate: the MI is unchanged).
        device: where to train (default: the device of ``x``).
        seed: seed of the split, the initialisation and the batches.
        progress: a tqdm progress bar: ``None`` (default) on a terminal only, ``True`` always,
            ``False`` never.

    Returns:
        :class:`MIEstimate`.

    Raises:
        TypeError, ValueError: for mismatched or non-float inputs, or too few samples for the
            batch sizes.

    Example:
        >>> from mibounds.tasks import CorrelatedGaussian
        >>> x, y = CorrelatedGaussian(2, mi=0.5).sample(2000, torch.Generator().manual_seed(0))
        >>> r = estimate_mi(x, y, "nwj", steps=300, batch_size=64, progress=False)
        >>> 0.2 < r.estimate < 0.8
        True
    """
    spec = get_estimator(estimator)
    xt, yt = _as_samples("x", x), _as_samples("y", y)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(
            f"x and y must have the same number of samples, got x {tuple(xt.shape)} and "
            f"y {tuple(yt.shape)}"
        )
    _checks.check_positive_int("steps", steps)
    _checks.check_positive_int("batch_size", batch_size, minimum=2)
    _checks.check_bool("standardize", standardize)
    _checks.check_seed("seed", seed)
    if progress is not None:
        _checks.check_bool("progress", progress)
    _checks.check_open_unit("eval_fraction", eval_fraction)
    _checks.check_positive("lr", lr)
    eval_bs = batch_size if eval_batch_size is None else eval_batch_size
    _checks.check_positive_int("eval_batch_size", eval_bs, minimum=2)
    n = xt.shape[0]
    n_eval = round(n * eval_fraction)
    n_train = n - n_eval
    if n_train < batch_size:
        raise ValueError(
            f"batch_size must be <= the number of training samples ({n_train} of n={n} with "
            f"eval_fraction={eval_fraction}), got {batch_size}"
        )
    if n_eval < eval_bs:
        raise ValueError(
            f"eval_batch_size must be <= the number of held-out samples ({n_eval}), got {eval_bs}"
        )
    dev = _checks.check_device("device", device) if device is not None else xt.device
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    x_dtype, y_dtype = xt.dtype, yt.dtype
    # standardised in float64 (a near-constant column keeps its digits), trained in float32
    xt = xt.detach().to(device=dev, dtype=torch.float64)[perm.to(dev)]
    yt = yt.detach().to(device=dev, dtype=torch.float64)[perm.to(dev)]
    x_train, y_train, x_eval, y_eval = xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:]
    dropped: dict[str, list[int]] = {}
    if standardize:
        x_train, x_eval, dropped["x"] = _standardize("x", x_train, x_eval, x_dtype)
        y_train, y_eval, dropped["y"] = _standardize("y", y_train, y_eval, y_dtype)

    if isinstance(critic, nn.Module):
        initial_state = {k: v.detach().clone() for k, v in critic.state_dict().items()}
    elif not isinstance(critic, str):
        raise TypeError(f"critic must be a str or nn.Module, got {type(critic).__name__}")
    x_train, y_train = x_train.float(), y_train.float()
    x_eval, y_eval = x_eval.float(), y_eval.float()
    dx, dy = x_train.shape[1], y_train.shape[1]
    restarts, note = 0, ""
    while True:
        torch.manual_seed(seed)
        if isinstance(critic, str):
            critic_module = make_critic(critic, dx, dy)
        else:
            critic.load_state_dict(initial_state)
            critic_module = critic
        model = spec.build(dx, dy, critic_module).to(dev)
        run_gen = torch.Generator().manual_seed(seed + 1)
        history = _train(
            model, x_train, y_train, steps, batch_size, lr, run_gen, progress, spec, restarts == 0
        )
        values = None if history is None else _evaluate(model, x_eval, y_eval, eval_bs)
        if history is not None and values is not None:
            break
        if restarts == _MAX_RESTARTS:
            warnings.warn(
                f"estimate_mi[{spec.name}]: training diverged (a non-finite loss or critic "
                f"output) at learning rates down to {lr:g}; the result is marked diverged",
                RuntimeWarning,
                stacklevel=2,
            )
            return MIEstimate(
                estimate=math.nan, stderr=math.nan, interval=(math.nan, math.nan),
                estimator=spec.name, kind=spec.kind, history=[], eval_values=[],
                n_train=n_train, n_eval=n_eval, diverged=True, restarts=restarts,
                dropped_columns=dropped,
                note=f"training diverged at every learning rate down to {lr:g}",
            )  # fmt: skip
        restarts += 1
        lr = lr / 10
    assert history is not None and values is not None
    if restarts:
        note = f"training diverged and restarted {restarts} time(s); final lr {lr:g}"
    vals = np.asarray(values)
    mean = float(vals.mean())
    if len(vals) > 1:
        se = float(vals.std(ddof=1) / math.sqrt(len(vals)))
    else:
        se = math.nan
        why = (
            "one held-out batch: no standard error (use a smaller eval_batch_size or a larger "
            "eval_fraction)"
        )
        note = f"{note}; {why}" if note else why
    return MIEstimate(
        estimate=mean,
        stderr=se,
        interval=(mean - 1.96 * se, mean + 1.96 * se),
        estimator=spec.name,
        kind=spec.kind,
        history=history,
        eval_values=values,
        n_train=n_train,
        n_eval=n_eval,
        restarts=restarts,
        dropped_columns=dropped,
        note=note,
    )


#: restarts with a ten times smaller learning rate after training diverges
_MAX_RESTARTS = 2


def _train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    progress: bool | None,
    spec: EstimatorSpec,
    first: bool,
) -> list[float] | None:
    """Train ``model`` with Adam and a cosine schedule; the training estimates per step, or
    ``None`` if training diverged (a non-finite loss, or a critic whose output is no longer
    finite, which the bounds refuse with a ValueError). A ValueError in the very first step of
    the ``first`` attempt is the input's fault and is raised."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history: list[float] = []
    model.train()
    n = x.shape[0]
    for step in _progress(range(steps), progress, f"estimate_mi[{spec.name}]"):
        idx = torch.randperm(n, generator=gen)[:batch_size].to(x.device)
        try:
            loss, est = model(x[idx], y[idx])
        except ValueError:
            if first and step == 0:
                raise  # the initial critic on the user's data: a real input error
            return None
        if not (math.isfinite(float(loss.detach())) and math.isfinite(float(est))):
            return None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(est))
    return history


def _evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> list[float] | None:
    """The bound on each disjoint held-out batch, or ``None`` if one is not finite."""
    model.eval()
    values: list[float] = []
    with torch.no_grad():
        for start in range(0, x.shape[0] - batch_size + 1, batch_size):
            try:
                _, est = model(x[start : start + batch_size], y[start : start + batch_size])
            except ValueError:
                return None
            if not math.isfinite(float(est)):
                return None
            values.append(float(est))
    return values


def _standardize(
    name: str, train: Tensor, held_out: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, list[int]]:
    """Centre and scale each column by the training split's mean and standard deviation
    (float64), leaving out columns that are constant up to the rounding of ``dtype`` (with a
    warning; they carry no information) and passing heavy-tailed columns through ``asinh``
    after a robust scaling (median and inter-quartile range). Both maps are invertible per
    column, so the MI is unchanged."""
    mean, std = train.mean(0), train.std(0)
    # constant: no spread beyond the rounding of the values themselves in their own dtype
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    tol = 4 * eps * mean.abs().clamp_min(torch.finfo(torch.float64).tiny)
    constant = ~(std > tol)
    dropped = [int(i) for i in torch.nonzero(constant).flatten()]
    if len(dropped) == train.shape[1]:
        raise ValueError(
            f"every column of {name} is constant in the training split (standard deviation "
            f"{std.tolist()}): it carries no information; the MI with a constant is 0"
        )
    if dropped:
        warnings.warn(
            f"estimate_mi: column(s) {dropped} of {name} are constant in the training split; "
            "they carry no information and are left out",
            UserWarning,
            stacklevel=3,
        )
        keep = ~constant
        train, held_out, mean, std = train[:, keep], held_out[:, keep], mean[keep], std[keep]
    z_train, z_held = (train - mean) / std, (held_out - mean) / std
    # heavy tails (Student-t with few degrees of freedom): a few points far out would dominate
    # the critic's inputs; asinh of a robust z-score keeps them in range
    q = torch.quantile(train, torch.tensor([0.25, 0.5, 0.75], dtype=train.dtype), dim=0)
    iqr = (q[2] - q[0]).clamp_min(1e-12 * std)
    kurt = (z_train**4).mean(0) - 3.0
    heavy = kurt > _HEAVY_TAIL_KURTOSIS
    if bool(heavy.any()):
        robust = lambda t: torch.asinh((t - q[1]) / (iqr / 1.349))  # noqa: E731
        z_train = torch.where(heavy, robust(train), z_train)
        z_held = torch.where(heavy, robust(held_out), z_held)
    return z_train, z_held, dropped


#: excess kurtosis above which a column counts as heavy-tailed (a Gaussian has 0, Student-t
#: with 5 degrees of freedom 6, and with 4 or fewer it is infinite)
_HEAVY_TAIL_KURTOSIS = 6.0


# --- the staircase protocol -----------------------------------------------------------------
