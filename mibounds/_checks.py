"""Every input check of the library and its message, in one place.

Shape, dtype and argument checks read metadata only: they never synchronise a device and never
break a ``torch.compile`` graph. Value checks (NaN/Inf) follow :mod:`torch.distributions`: on by
default in eager mode, switchable off with :func:`set_validate_args`, skipped while compiling.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

_VALIDATE_ARGS = True

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: the largest finite value of each floating dtype
_LARGEST = {dt: torch.finfo(dt).max for dt in _FLOAT_DTYPES}
REDUCTIONS = ("mean", "sum", "none")


def set_validate_args(value: bool) -> None:
    r"""Turn the value checks (NaN/Inf in scores and inputs) on or off globally.

    Shape, dtype and argument checks always run; only the checks that must read tensor values
    (and so synchronise with the device) are switched. They are skipped while compiling.

    Args:
        value: ``True`` to check values (the default), ``False`` to skip those checks.

    Raises:
        TypeError: if ``value`` is not a bool.

    Example:
        >>> import mibounds
        >>> mibounds.set_validate_args(False)
        >>> mibounds.get_validate_args()
        False
        >>> mibounds.set_validate_args(True)
    """
    global _VALIDATE_ARGS
    if not isinstance(value, bool):
        raise TypeError(f"set_validate_args: value must be a bool, got {type(value).__name__}")
    _VALIDATE_ARGS = value


def get_validate_args() -> bool:
    r"""Whether the value checks (NaN/Inf) are on.

    Returns:
        The current global setting (``True`` unless changed by :func:`set_validate_args`).

    Example:
        >>> import mibounds
        >>> mibounds.get_validate_args()
        True
    """
    return _VALIDATE_ARGS


def validating() -> bool:
    """Whether checks on values run now: validation is on and nothing is being compiled."""
    return _VALIDATE_ARGS and not torch.compiler.is_compiling()


def check_values(name: str, tensor: torch.Tensor, validate: bool | None = None) -> None:
    """Raise if ``tensor`` holds NaN or Inf while value validation is on (eager only;
    ``validate``: whether values are validated, where the caller knows)."""
    if not (validating() if validate is None else validate):
        return
    numel = tensor.numel()
    if numel == 0 or (numel == 1 and math.isfinite(tensor.item())):  # one read, no reduction
        return
    # one reduction pass and no boolean copy: a NaN anywhere makes both extremes NaN (see
    # torch.aminmax), an infinity makes one of them infinite; both read back in one copy
    if not all(math.isfinite(v) for v in torch.stack(torch.aminmax(tensor.detach())).tolist()):
        n_nan = int(torch.isnan(tensor.detach()).sum())
        n_inf = int(torch.isinf(tensor.detach()).sum())
        raise ValueError(
            f"{name} must be finite, got {n_nan} NaN and {n_inf} Inf value(s) in a tensor of "
            f"shape {tuple(tensor.shape)} (turn this check off with "
            "mibounds.set_validate_args(False))"
        )


def check_tensor(name: str, value: Any, *, min_dim: int = 0) -> torch.Tensor:
    """A floating-point tensor with at least ``min_dim`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {value.dtype}"
        )
    if value.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}"
        )
    return value


def check_embeddings(min_n: int, **named: Any) -> list[torch.Tensor]:
    """``(N, d)`` features, each with ``N >= min_n`` rows and finite values (checked while
    values are validated), all of one shape; errors name each as the keyword it is passed
    under (the caller's argument name)."""
    out = _embedding_shapes(min_n, named)
    check_values_of(named)
    return out


def _embedding_shapes(min_n: int, named: dict[str, Any]) -> list[torch.Tensor]:
    """:func:`check_embeddings` but for the values."""
    out = list(named.values())
    # the common case, accepted in one test each; anything else gets its message below
    first = out[0]
    common = isinstance(first, torch.Tensor) and first.dtype in _FLOAT_DTYPES
    if common and first.dim() == 2 and first.shape[0] >= min_n:
        shape = first.shape
        for t in out[1:]:
            if not (isinstance(t, torch.Tensor) and t.dtype in _FLOAT_DTYPES and t.shape == shape):
                break
        else:
            return out
    for name, t in named.items():
        check_tensor(name, t, min_dim=2)
        if t.dim() != 2:
            raise ValueError(f"{name} must be (N, d) features, got shape {tuple(t.shape)}")
        if t.shape[0] < min_n:
            raise ValueError(
                f"{name} needs at least {min_n} samples (rows) for a contrastive loss, got "
                f"shape {tuple(t.shape)}"
            )
    (a_name, a), *others = zip(named, out, strict=True)
    for b_name, b in others:
        if a.shape != b.shape:
            raise ValueError(
                f"{a_name} and {b_name} must have the same shape (N, d), got "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )
    return out


def check_values_of(named: dict[str, torch.Tensor]) -> None:
    """:func:`check_values` of each tensor, in order, with the extremes of all of them read
    back at once where they share a dtype and a device (one device synchronisation)."""
    if not validating():
        return
    ts = list(named.values())
    if len({(t.dtype, t.device) for t in ts}) == 1 and all(t.numel() for t in ts):
        extremes = torch.stack([e for t in ts for e in torch.aminmax(t.detach())]).tolist()
        if all(math.isfinite(v) for v in extremes):
            return
    for name, t in named.items():
        check_values(name, t)


def check_scores(name: str, scores: Any, rectangular: bool = False) -> torch.Tensor:
    """A dense score matrix ``(..., N, N)`` (``(..., N, M)`` with ``M >= N`` if
    ``rectangular``) with ``N >= 2`` and finite values."""
    check_tensor(name, scores, min_dim=2)
    n, m = scores.shape[-2], scores.shape[-1]
    if rectangular and m < n:
        raise ValueError(
            f"{name} must be (..., N, M) with M >= N: rows are anchors, the first N columns "
            f"their paired candidates and the rest extra negatives; got shape {tuple(scores.shape)}"
        )
    if not rectangular and n != m:
        raise ValueError(
            f"{name} must be square in its last two dimensions (..., N, N) with rows indexing x "
            f"and columns indexing y, got shape {tuple(scores.shape)}"
        )
    if n < 2:
        raise ValueError(
            f"{name} needs N >= 2 samples (at least one negative per row), "
            f"got shape {tuple(scores.shape)}"
        )
    check_values(name, scores)
    return scores


def check_pair(x_name: str, x: Any, y_name: str, y: Any, min_n: int = 2) -> None:
    """Two sample tensors ``(..., N, d)`` that agree on their batch size and leading dims."""
    check_tensor(x_name, x, min_dim=2)
    check_tensor(y_name, y, min_dim=2)
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"{x_name} and {y_name} must agree on every dimension but the last "
            f"(..., N, d): got {x_name} {tuple(x.shape)} and {y_name} {tuple(y.shape)}"
        )
    if x.shape[-2] < min_n:
        raise ValueError(
            f"{x_name} and {y_name} need N >= {min_n} samples, got shape {tuple(x.shape)}"
        )


def check_same_last_dim(x_name: str, x: torch.Tensor, y_name: str, y: torch.Tensor) -> None:
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{x_name} and {y_name} must have the same feature dimension for this similarity, "
            f"got {x_name} {tuple(x.shape)} and {y_name} {tuple(y.shape)}"
        )


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return str(reduction)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value.lower()


def check_open_unit(name: str, value: Any) -> float:
    """A real number strictly between 0 and 1."""
    v = check_real(name, value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {value!r}")
    return v


def check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_positive(name: str, value: Any) -> float:
    v = check_real(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_temperature(name: str, value: Any) -> None:
    """A positive number, or a positive scalar tensor (checked for sign in eager mode)."""
    if isinstance(value, torch.Tensor):
        check_tensor(name, value)
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar tensor, got shape {tuple(value.shape)}")
        if validating() and not bool((value.detach() > 0).all()):
            raise ValueError(f"{name} must be > 0, got {float(value.detach())}")
        return
    check_positive(name, value)


def check_broadcast(name: str, value: Any, target: torch.Size, what: str) -> torch.Tensor:
    """A tensor that broadcasts to ``target`` (used for baselines indexed by y)."""
    check_tensor(name, value)
    try:
        shape = torch.broadcast_shapes(value.shape, target)
    except RuntimeError:
        shape = None
    if shape != target:  # it must not grow the result either
        raise ValueError(
            f"{name} must broadcast to {what} {tuple(target)}, got shape {tuple(value.shape)}"
        )
    check_values(name, value)
    return value


def check_bool(name: str, value: Any) -> bool:
    """A real ``bool`` (a string such as ``"no"`` is truthy and would silently mean True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
    return value


def check_int_sequence(name: str, value: Any) -> tuple[int, ...]:
    """A list or tuple of positive ints (layer sizes)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a list or tuple of positive ints (layer sizes), got "
            f"{type(value).__name__} {value!r}"
        )
    for v in value:
        check_positive_int(name, v)
    return tuple(value)


def check_module_class(name: str, value: Any) -> type:
    """A subclass of ``torch.nn.Module`` (to be instantiated), such as ``nn.ReLU``."""
    if not (isinstance(value, type) and issubclass(value, torch.nn.Module)):
        raise TypeError(f"{name} must be an nn.Module class such as torch.nn.ReLU, got {value!r}")
    return value


def check_module(name: str, value: Any, allow_none: bool = True) -> Any:
    """An ``nn.Module`` instance (or ``None`` if allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, torch.nn.Module):
        what = "an nn.Module or None" if allow_none else "an nn.Module"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    return value


def check_generator(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(value).__name__}")
    return value


def check_seed(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value


def check_device(name: str, value: Any) -> torch.device:
    """A device torch knows and that this machine has."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{name} must be a torch device such as 'cpu' or 'cuda', got {value!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={value!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"{name}={value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return dev


def first_in_features(module: Any) -> int | None:
    """The input size of ``module`` when it starts with an ``nn.Linear`` (itself, or the first
    layer of an ``nn.Sequential`` such as an MLP); ``None`` when it cannot be read off."""
    while isinstance(module, torch.nn.Sequential) and len(module) > 0:
        module = module[0]
    if isinstance(module, torch.nn.Linear):
        return int(module.in_features)
    return None


def check_features(name: str, tensor: Any, expected: int | None, owner: str) -> None:
    """``tensor``'s last dimension equals ``expected`` (what ``owner`` was built for)."""
    if expected is None or not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
        return
    if tensor.shape[-1] != expected:
        raise ValueError(
            f"{name} must have {expected} features (the last dimension) for {owner}, got "
            f"shape {tuple(tensor.shape)}"
        )


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


def check_labels(name: str, labels: object) -> torch.Tensor | None:
    """``None``, or one integer label per sample, ``(N,)``, as int64."""
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(labels)}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(
            f"{name} must be one label per sample, shape (N,), got {tuple(labels.shape)}"
        )
    return labels.long()


def check_labels_of(name: str, labels: Any, n: int) -> torch.Tensor:
    """``(n,)`` integer labels that must be given."""
    if labels is None:
        raise ValueError(f"{name} is required: pass ({n},) integer labels")
    out = check_labels(name, labels)
    assert out is not None
    if out.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    return out


def _is_scalar_tensor(name: str, value: Any) -> bool:
    """Whether ``value`` is a one-element floating tensor (``True``) or a real Python number
    (``False``); anything else raises, naming ``name``."""
    if isinstance(value, torch.Tensor):
        if value.dtype in _FLOAT_DTYPES and value.numel() == 1:  # the common case
            return True
        check_tensor(name, value)
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a scalar tensor, got {type(value).__name__}")
    return False


def scale_temperature(
    name: str, logit_scale: Any, number: bool = False, validate: bool | None = None
) -> torch.Tensor | float:
    """The temperature ``1 / logit_scale`` of a positive, finite logit scale (float or scalar
    tensor, the temperature then a tensor with its gradient) whose inverse is finite too in
    its dtype. The scale is read once, while values are validated (``validate``: whether they
    are, where the caller knows). With ``number`` (a caller that multiplies by the scale
    itself and names the temperature only in its messages) the temperature of a validated
    tensor scale is that Python float, and no tensor is formed."""
    if _is_scalar_tensor(name, logit_scale):
        if not (validating() if validate is None else validate):
            return logit_scale.reciprocal()
        value = logit_scale.item()
        largest = _LARGEST[logit_scale.dtype]
    else:
        value = float(logit_scale)
        largest = sys.float_info.max
    inverse = 1.0 / value if value > 0 else math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    if not inverse <= largest:
        raise ValueError(
            f"{name}={value:g} is too small: the temperature 1 / {name} overflows "
            f"{logit_scale.dtype if isinstance(logit_scale, torch.Tensor) else 'float'}"
        )
    if number or not isinstance(logit_scale, torch.Tensor):
        return inverse
    return logit_scale.reciprocal()


def check_scalar(name: str, value: Any, validate: bool | None = None) -> torch.Tensor | float:
    """A finite scalar: a float or a one-element tensor (its value read while values are
    validated; ``validate``: whether they are, where the caller knows)."""
    if _is_scalar_tensor(name, value):
        if validate is not False:
            check_values(name, value, validate)
        return value
    return check_real(name, value)


class LossArguments(NamedTuple):
    """A drop-in loss's arguments, checked (see :func:`check_loss_arguments`)."""

    features: list[torch.Tensor]
    temperature: float | torch.Tensor
    bias: float | torch.Tensor | None
    labels: torch.Tensor | None
    extra: torch.Tensor | None
    #: whether the features' values are left to the caller's kernel (see ``held_by``)
    held: bool = False


def check_loss_arguments(
    min_n: int,
    features: dict[str, Any],
    temperature: tuple[str, Any] | None = None,
    logit_scale: tuple[str, Any] | None = None,
    logit_bias: tuple[str, Any] | None = None,
    labels: tuple[str, Any] | None = None,
    extra: tuple[str, Any] | None = None,
    held_by: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
) -> LossArguments:
    """Every argument of a drop-in loss's call, checked once, in this order: the ``features``
    (:func:`check_embeddings`), the ``labels`` (one per row of the first features), the
    ``temperature`` or the ``logit_scale`` (whose inverse is the temperature returned), and the
    ``logit_bias``, and the ``extra`` columns (``(K, d)`` negatives beside the features, a
    queue; ``K = 0`` needs two rows). Each is given as ``(name, value)`` with the name the
    loss's users pass it under, and every message names it so.

    ``held_by(x, y)``, given two features of checked shapes, says whether the kernel that will
    reduce them checks their values itself (the small-batch path reads its logits' extremes
    back once, and names the features only when they are not finite): then they are not read
    here, nor is a tensor bias (read there with them, and named first), and ``held`` is set.
    It is asked only eagerly (never while compiling)."""
    feats = _embedding_shapes(min_n, features)
    compiling = torch.compiler.is_compiling()
    validate = _VALIDATE_ARGS and not compiling
    held = held_by is not None and not compiling and held_by(feats[0], feats[-1])
    if not held and validate:
        check_values_of(features)
    if extra is not None:
        _check_extra_columns(*extra, next(iter(features)), feats[0])
    lab = None if labels is None else check_labels_of(labels[0], labels[1], feats[0].shape[0])
    tau: float | torch.Tensor = 1.0
    if temperature is not None:
        check_temperature(*temperature)
        tau = temperature[1]
    if logit_scale is not None:
        tau = scale_temperature(*logit_scale, number=held, validate=validate)
    bias = None
    if logit_bias is not None and logit_bias[1] is not None:
        bias = check_scalar(*logit_bias, validate=validate and not held)
    return LossArguments(feats, tau, bias, lab, None if extra is None else extra[1], held)


def _check_extra_columns(name: str, value: Any, rows_name: str, rows: torch.Tensor) -> None:
    """``(K, d)`` extra negatives with the features' ``d`` and finite values; ``K = 0`` only
    with two rows or more (a single row would have no negative)."""
    check_tensor(name, value, min_dim=2)
    if value.dim() != 2 or value.shape[-1] != rows.shape[-1]:
        raise ValueError(
            f"{name} must be (K, {rows.shape[-1]}) to match the features, got {tuple(value.shape)}"
        )
    if rows.shape[0] == 1 and value.shape[0] == 0:
        raise ValueError(
            f"{rows_name} has one sample and {name} is empty: the {rows_name} has no negative; "
            f"pass a batch of at least 2 or a non-empty {name}"
        )
    check_values(name, value)
