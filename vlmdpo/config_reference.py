"""The config reference, generated from the dataclasses themselves: every key, its type, default and doc.

Each field's doc is the string literal written right after it in the class body (read with ``ast``), so the
reference printed by ``vlmdpo config`` cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap


def field_docs(cls) -> dict[str, str]:
    """``{field name: docstring}`` of a dataclass, from the string literal after each annotated field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys(schema) -> list[tuple[str, str, object, str]]:
    """``(dotted key, type, default, doc)`` for every leaf field of ``schema``; nested dataclasses give
    ``section.key`` names (a section's own doc is its class docstring)."""
    cls = schema if isinstance(schema, type) else type(schema)
    docs = field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            rows += [(f"{f.name}.{key}", kind, value, doc) for key, kind, value, doc in config_keys(type(default))]
        else:
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            rows.append((f.name, kind, default, docs.get(f.name, "")))
    return rows


def config_reference(schema, width: int = 100) -> str:
    """Plain text: one block per key, ``key = default  (type)`` then its doc, indented and wrapped."""
    lines = []
    for key, kind, default, doc in config_keys(schema):
        lines.append(f"{key} = {default!r}  ({kind})")
        lines += textwrap.wrap(" ".join(doc.split()), width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def unknown_key_message(key: str, schema) -> str:
    """One line for a key ``schema`` does not have, with the closest known key when there is one."""
    known = [name for name, *_ in config_keys(schema)]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}{hint}"
