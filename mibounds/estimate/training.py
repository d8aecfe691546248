"""Training the critics of :func:`~mibounds.estimate.estimate_mi`: stacked folds, Adam in
epochs of disjoint batches, early stopping on a validation split, held-out evaluation."""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mibounds.estimate.factory import StackedConcatCritic
from mibounds.estimate.gaussian import PlusGaussian
from mibounds.estimate.registry import CriticEstimator, EstimatorSpec
from mibounds.nn.critics import ConcatCritic, SeparableCritic


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


#: nats by which a validation check must beat the best so far to count as an improvement
#: (smaller gains are within the noise of a validation split of a few hundred samples)
_MIN_IMPROVEMENT = 2e-3


#: what :func:`_fit` returns: the mean training estimate per step, each member's held-out
#: values, the step of each member's kept critic and its validation score (higher is better)
_Fitted = tuple[list[float], list[list[float]], list[int], list[float]]


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
