"""The environment variables the library consults on every call, read cheaply.

``os.environ.get`` of a name that is not set raises a ``KeyError`` inside ``os.environ`` and
catches it again: a few microseconds, which at a small batch is a sizable share of a loss's
call (the path it takes consults ``MIBOUNDS_PATH`` and, with Triton installed,
``TRITON_INTERPRET``). :func:`setting` reads the table ``os.environ`` keeps its entries in,
the name encoded once, which is what ``os.environ[name]`` itself reads: the same value, set
or changed at any time; where that table is not there (a Python that keeps no such table, or
``os.environ`` replaced by another mapping) it asks ``os.environ.get``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["setting"]


def _table() -> tuple[Any, dict[Any, Any], Any, Any] | None:
    """``os.environ``, its table, and how it encodes names and decodes values, or ``None``."""
    env = os.environ
    data = getattr(env, "_data", None)
    encode = getattr(env, "encodekey", None)
    decode = getattr(env, "decodevalue", None)
    if not (isinstance(data, dict) and callable(encode) and callable(decode)):
        return None
    return env, data, encode, decode


_TABLE = _table()
#: each name as the table holds it, encoded once
_KEYS: dict[str, Any] = {}


def setting(name: str, default: str = "") -> str:
    """The value of the environment variable ``name``, else ``default``: what
    ``os.environ.get(name, default)`` returns.

    Example:
        >>> import os
        >>> setting("PATH") == os.environ.get("PATH", "")
        True
    """
    if _TABLE is None or os.environ is not _TABLE[0]:
        return os.environ.get(name, default)
    _, data, encode, decode = _TABLE
    key = _KEYS.get(name)
    if key is None:
        key = _KEYS[name] = encode(name)
    value = data.get(key)
    return default if value is None else decode(value)
