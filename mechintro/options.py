"""Command-line options derived from config dataclasses, and config files (TOML or YAML).

A config dataclass's fields, defaults and help texts (``opt(default, help)``, or the
``Args:`` block of its docstring) become argparse options, so the command line and the
library cannot drift apart (sparsify's pattern; HOUSE_STYLE.md §5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

CONFIG_SUFFIXES: tuple[str, ...] = (".toml", ".yaml", ".yml")


class UsageError(Exception):
    """A bad command line or config file: reported in one line, exit status 2."""


def opt(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its default and its help text (the option's --help)."""
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def arg(help: str, **metadata: Any) -> Any:
    """A required config field (``positional=True``: an argument rather than an option)."""
    return field(metadata={"help": help, **metadata})


# ---------------------------------------------------------------------------------------------
# options from dataclasses


def field_docs(cls: type) -> dict[str, str]:
    """Per-field help from a dataclass docstring's ``Args:`` block (one line per field)."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    if not any(line.strip() == "Args:" for line in lines):
        return docs
    start = next(i for i, line in enumerate(lines) if line.strip() == "Args:") + 1
    indent, name = None, None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        m = re.match(r"(\w+): (.*)", line.strip())
        if depth == indent and m:
            name = m.group(1)
            docs[name] = m.group(2)
        elif depth > indent and name:
            docs[name] += " " + line.strip()
        else:
            break
    return {k: _plain(v) for k, v in docs.items()}


def _plain(text: str) -> str:
    """reST roles and literals as plain text: ``:func:`~a.b``` → ``a.b``."""
    text = re.sub(r":(?:class|func|meth|data|mod|attr|obj):", "", text)
    return re.sub(r"~(?=\w)", "", text.replace("``", "").replace("`", ""))


def _base_type(hint: Any) -> Any:
    """``int | None`` → int; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def add_fields(
    parser: Any,
    cls: Any,
    *,
    suppress: bool = False,
    choices: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """One option per field of dataclass ``cls``: ``--field-name``, typed from the field's
    annotation, help from ``metadata["help"]`` or the docstring's ``Args:``, and the default
    shown. ``positional`` metadata makes an argument. With ``suppress``, options that are not
    given are absent from the parsed namespace (so they can override a config file).
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        hints = {}
    docs = field_docs(cls)
    choices = choices or {}
    for f in dataclasses.fields(cls):
        help_text = (f.metadata.get("help") or docs.get(f.name, "")).replace("%", "%%")
        has_default = f.default is not dataclasses.MISSING or (
            f.default_factory is not dataclasses.MISSING
        )
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if f.metadata.get("positional"):
            parser.add_argument(f.name, help=help_text, metavar=f.name.upper())
            continue
        hint = _base_type(hints.get(f.name, type(default) if default is not None else str))
        origin = typing.get_origin(hint)
        kw: dict[str, Any] = {}
        if f.name in choices:
            kw["choices"] = list(choices[f.name])
        empty = default is None or default == "" or default == ()
        shown = "" if not has_default or empty else f" (default: {_show(default)})"
        flag = "--" + f.name.replace("_", "-")
        if hint is bool or isinstance(default, bool):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS if suppress else default,
                help=help_text + (shown if suppress else ""),
            )
            continue
        if origin is tuple or isinstance(default, tuple):
            args = typing.get_args(hint)
            kind = args[0] if args else (type(default[0]) if default else str)
            kw.update(nargs="+", type=kind, metavar=f.name.upper().removesuffix("S"))
            if "choices" in kw:
                help_text += f" (each one of: {', '.join(map(str, kw['choices']))})"
        elif origin in (dict, Mapping) or hint in (dict, Mapping) or isinstance(default, dict):
            kw.update(type=json.loads, metavar="JSON")
        else:
            kw["type"] = hint if hint in (int, float, str) else str
            if "choices" not in kw:
                kw["metavar"] = {int: "N", float: "X"}.get(kw["type"], f.name.upper())
        required = not has_default and not suppress
        parser.add_argument(
            flag,
            default=argparse.SUPPRESS if suppress else default,
            required=required,
            help=help_text + shown,
            **kw,
        )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return "none" if value in (None, "") else str(value)


def _tuples(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def _build(cls: Any, args: Mapping[str, Any]) -> Any:
    try:
        return cls(**_tuples(args))
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# config files


def read_config(path: str | Path) -> dict[str, Any]:
    """A ``.toml`` (tomllib, or tomli before Python 3.11) or ``.yaml`` (PyYAML) file's mapping."""
    p = Path(path)
    if p.suffix not in CONFIG_SUFFIXES:
        raise UsageError(f"{p}: a config file must end in {', '.join(CONFIG_SUFFIXES)}")
    if not p.is_file():
        raise UsageError(f"config file {p} not found")
    if p.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise UsageError(
                    "reading TOML on Python 3.10 needs tomli: pip install tomli"
                ) from None
        try:
            data = tomllib.loads(p.read_text("utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{p} is not valid TOML: {e}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise UsageError(
                f"reading {p} needs PyYAML: pip install pyyaml (or write the config as .toml)"
            ) from None
        try:
            data = yaml.safe_load(p.read_text("utf-8"))
        except yaml.YAMLError as e:
            raise UsageError(f"{p} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{p} must hold a mapping of keys, got a {type(data).__name__}")
    return data
