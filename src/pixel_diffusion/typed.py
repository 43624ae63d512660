"""Dataclasses read from JSON, TOML and the command line: one set of conversions and one-line
errors for every config section, network config, objective, walk and model description.

    read(Walk, {"sampler": "ddim", "steps": "20"}, "walk")   # Walk(sampler='ddim', steps=20)
    read(Walk, {"steps": "many"}, "walk")   # ValueError: walk.steps: expected an integer, got 'many'

A value is converted to its field's annotation: a number or a switch may come quoted (a TOML
file's `lr = "3e-4"`, every command-line value), a list or a table may come as JSON text
(`betas=[0.9,0.99]`), a nested dataclass as a table; anything else is refused in one line that
names the field, what it expects and what it got. Unknown fields are refused the same way.
What a value means (a positive learning rate, a known sampler) is the dataclass's own check, in
its __post_init__; its error is passed on in one line with where it was read.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable

TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")


def read(cls, data, where: str = "", readers: dict[str, Callable] | None = None):
    """An instance of the dataclass `cls` from the table `data`: unknown fields refused, each
    value converted to its field's annotation (`convert`); `readers` read the fields they name
    their own way, as reader(value, where). Any error is one ValueError line naming `where`."""
    prefix = f"{where}." if where else ""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__} must be a table of {', '.join(f.name for f in fields)}; "
                         f"got {type(data).__name__}")
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names)
    if unknown:
        shown = unknown[0] if str(unknown[0]).isprintable() else repr(unknown[0])  # one line, whatever the key
        raise ValueError(f"unknown field {prefix}{shown}; expected one of {', '.join(sorted(names))}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in data]
    if required:
        raise ValueError(f"{prefix}{required[0]} is missing")
    hints = typing.get_type_hints(cls)
    readers = readers or {}
    values = {name: readers[name](value, prefix + name) if name in readers else convert(value, hints[name], prefix + name)
              for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{where}: {line}" if where and not line.startswith(where) else line) from None


def convert(value, annotation, where: str):
    """`value` as the annotation says: bool, int, float, str, tuple[X, ...], tuple[X, Y], dict,
    a dataclass, a union of them (`int | None`); any other annotation takes the value as it is."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or isinstance(value, str) and value.strip() == "null"):
            return None
        kinds = [kind for kind in args if kind is not type(None)]
        for kind in kinds:
            try:
                return convert(value, kind, where)
            except ValueError:
                pass
        wanted = " or ".join(_describe(kind) for kind in kinds) + (" or null" if type(None) in args else "")
        raise ValueError(f"{where}: expected {wanted}, got {value!r}")
    if isinstance(value, str) and annotation is not str and (annotation in (int, float, dict) or origin in (tuple, list, dict)
                                                            or dataclasses.is_dataclass(annotation)):
        value, original = _parsed(value, annotation), value
    else:
        original = value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
    elif annotation is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            return _items(value, args, origin, where)
    elif annotation is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(annotation):
        return value if isinstance(value, annotation) else read(annotation, value, where)
    else:
        return value
    raise ValueError(f"{where}: expected {_describe(annotation)}, got {original!r}")


def _items(value, args: tuple, origin, where: str):
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        kind = args[0] if args else typing.Any
        items = [convert(v, kind, f"{where}[{k}]") for k, v in enumerate(value)]
    else:
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {_describe(tuple[args])}, got {list(value)!r}")
        items = [convert(v, kind, f"{where}[{k}]") for k, (v, kind) in enumerate(zip(value, args))]
    return tuple(items) if origin is tuple else items


def _parsed(text: str, annotation):
    """A quoted value: a number, a switch word, or JSON text of a list or table; else the text."""
    if annotation in (int, float):
        try:
            return float(text) if annotation is float or not text.strip().lstrip("+-").isdigit() else int(text)
        except ValueError:
            return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (tuple, list):
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {_plural(args[0]) if args else 'values'}"
        return f"a list of {len(args)} {_plural(args[0])}" if len(set(args)) == 1 else f"a list [{', '.join(map(_describe, args))}]"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(kind) for kind in args if kind is not type(None))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    if annotation in names:
        return names[annotation]
    return "a table" if dataclasses.is_dataclass(annotation) or origin is dict else getattr(annotation, "__name__", str(annotation))


def _plural(annotation) -> str:
    return {bool: "switches", int: "integers", float: "numbers", str: "strings"}.get(annotation, "values")


def read_call(fn: Callable, options, where: str, extra: dict | None = None) -> dict:
    """Keyword options for `fn` from a table, each converted to its parameter's annotation (and
    `extra`'s names: {name: annotation} the caller takes beside them); an unknown one refused."""
    if not isinstance(options, dict):
        raise ValueError(f"{where} must be a table of options; got {options!r}")
    annotated = typing.get_type_hints(fn)
    hints = {name: annotated.get(name, typing.Any) for name, p in inspect.signature(fn).parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    hints.update(extra or {})
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise ValueError(f"unknown option {where}.{unknown[0]}; expected one of {', '.join(sorted(hints)) or 'none'}")
    return {name: convert(value, hints[name], f"{where}.{name}") for name, value in options.items()}
