"""``package.module:NAME``: how a setting names an object in importable code (a reader, a vocabulary, a pair
builder), resolved in one place with one kind of error."""

from __future__ import annotations

import importlib
import re


def resolve_name(spec: str, what: str, kind: type | tuple[type, ...] | None = None, *,
                 error: type[Exception] = ValueError):
    """The object ``spec`` (``package.module:NAME``) names, checked to be a ``kind`` (``callable`` for any
    callable) when given; ``error`` is raised, naming the setting ``what``, when it cannot be found or is of
    another kind."""
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        raise error(f"{what} must look like package.module:NAME, got {spec!r}")
    module, _, name = spec.partition(":")
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise error(f"{what} {spec!r}: cannot import {name} from {module} ({exc})") from None
    if kind is callable:
        if not callable(value):
            raise error(f"{what} {spec!r} is a {type(value).__name__}, not a function")
    elif kind is not None and not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise error(f"{what} {spec!r} is a {type(value).__name__}, not a {expected}")
    return value
