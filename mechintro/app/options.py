"""Command-line options derived from config dataclasses, and config files (TOML or YAML).

A config dataclass's fields, defaults and help texts (``opt(default, help)``, or the
``Args:`` block of its docstring) become argparse options, so the command line and the
library cannot drift apart (sparsify's pattern; docs/architecture.md §6).

This module and the config dataclasses the command line reads import nothing heavy (no
torch, transformers, TransformerLens, sae-lens, pandas or plotly), so ``mechintro --help``
is quick; what a config checks against a heavy module it imports in ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechintro.batching import check_batch_size
from mechintro.choices import BACKENDS, METHODS, ON_BAD_WORD

CONFIG_SUFFIXES: tuple[str, ...] = (".toml", ".yaml", ".yml")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
GRADERS: tuple[str, ...] = ("rule", "fonseca", "judge")
LOCALHOST = "127.0.0.1"


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
    """Per-field help from a dataclass docstring's ``Args:`` block (one line per field), else
    from the comment that ends the field's line in the class body."""
    docs = _comment_docs(cls)
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


def _comment_docs(cls: type) -> dict[str, str]:
    """``{field: comment}`` for body lines ``name: type = default  # comment``."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^    (\w+): [^\n]*?  # ([^\n]+)$", source, flags=re.MULTILINE)
    return {name: _plain(text) for name, text in found}


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
    defaults: Any = None,
) -> None:
    """One option per field of dataclass ``cls``: ``--field-name``, typed from the field's
    annotation, help from ``metadata["help"]`` or the docstring's ``Args:``, and the default
    shown. ``positional`` metadata makes an argument. With ``suppress``, options that are not
    given are absent from the parsed namespace (so they can override a config file).
    ``defaults``: an instance of ``cls`` whose values are the defaults shown (a recipe's).
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
        if defaults is not None:
            default, has_default = getattr(defaults, f.name), True
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
        if (hint is bool or isinstance(default, bool)) and default is False and not suppress:
            parser.add_argument(flag, action="store_true", help=help_text)  # off unless given
            continue
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


class LazyParser(argparse.ArgumentParser):
    """A subcommand's parser whose options are added when it is used (to parse or for
    ``--help``), by ``add_options(parser)``: building the whole command line then imports
    only what the chosen command needs. Pass it as ``add_subparsers(parser_class=...)``."""

    def __init__(
        self,
        *args: Any,
        add_options: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._add_options = add_options

    def _ready(self) -> None:
        add, self._add_options = self._add_options, None
        if add is not None:
            add(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._ready()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ready()
        return super().format_help()

    def format_usage(self) -> str:
        self._ready()
        return super().format_usage()


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value)
    return "none" if value in (None, "") else str(value)


def as_tuples(args: Mapping[str, Any]) -> dict[str, Any]:
    """Parsed options with argparse's lists (``nargs="+"``) as the tuples dataclasses hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def build_config(cls: Any, args: Mapping[str, Any]) -> Any:
    """``cls(**args)``, a refused value reported as a :class:`UsageError`."""
    try:
        return cls(**as_tuples(args))
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


# ---------------------------------------------------------------------------------------------
# the commands' configs

MODEL_HELP = "model folder, .gguf file, Hub name, or builtin:smollm2"
REVISION_HELP = "Hub revision of the model (branch, tag or commit; default: main)"


def _check_model_options(backend: str, dtype: str, batch_size: int) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    check_batch_size(batch_size)


@dataclass(frozen=True)
class RunConfig:
    """How a sweep runs: the model, the results folder, batching. In a config file these are
    the top-level keys; the grid goes in a ``[spec]`` table of SweepSpec fields."""

    model: str = opt("", MODEL_HELP)
    revision: str = opt("", REVISION_HELP)
    out: str = opt("", "results folder (spec.json, trials.jsonl)")
    backend: str = opt("bridge", "TransformerLens model class")
    dtype: str = opt("float32", "weights and activations dtype")
    device: str = opt("cpu", "torch device, e.g. cuda")
    batch_size: int | str = opt(
        32,
        "trials per generation batch, or auto: the largest the memory plan fits; results "
        "do not depend on it",
    )
    depths: tuple[float, ...] = opt((), "also inject at these depth fractions (0.6: 60% deep)")
    nproc: int = opt(1, "data-parallel processes (one per GPU), started through torchrun")
    n_devices: int = opt(1, "split the model over this many GPUs (device_map / n_devices)")

    def __post_init__(self) -> None:
        size = self.batch_size
        if isinstance(size, str) and size != "auto":
            if not size.isdigit():
                raise ValueError(f"batch_size must be a positive int or auto, got {size!r}")
            object.__setattr__(self, "batch_size", int(size))
        _check_model_options(
            self.backend, self.dtype, 1 if size == "auto" else int(self.batch_size)
        )
        for name in ("nproc", "n_devices"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        bad = [d for d in self.depths if not 0 <= d < 1]
        if bad:
            raise ValueError(f"depths are fractions in [0, 1), got {bad}")


@dataclass(frozen=True)
class ExtractConfig:
    """Extract concept vectors into a cache folder (a sweep reads RESULTS/vectors)."""

    model: str = arg(MODEL_HELP)
    out: str = arg("cache folder; use RESULTS/vectors to prefill a sweep's")
    revision: str = opt("", REVISION_HELP)
    words: tuple[str, ...] = opt((), "concept words")
    word_list: str = opt("", "a shipped word list instead (e.g. lindsey_concepts)")
    layer: int | None = opt(None, "block index")
    depth: float | None = opt(None, "or a depth fraction, e.g. 0.6")
    method: str = opt("lindsey", "extraction method (docs/protocols.md §1)")
    baseline: tuple[str, ...] = opt(
        (), "baseline words (default: a model organism's own object words, else the method's list)"
    )
    on_bad_word: str = opt(
        "raise",
        "words the tokenizer does not know, duplicate or zero vectors: raise (refuse "
        "them) or warn (keep them, warned and listed)",
    )
    backend: str = opt("bridge", "TransformerLens model class")
    dtype: str = opt("float32", "weights and activations dtype")
    device: str = opt("cpu", "torch device, e.g. cuda")
    batch_size: int = opt(32, "prompts per forward pass")

    def __post_init__(self) -> None:
        _check_model_options(self.backend, self.dtype, self.batch_size)
        if bool(self.words) == bool(self.word_list):
            raise ValueError("give --words W1 W2 ... or --word-list NAME (one of the two)")
        if (self.layer is None) == (self.depth is None):
            raise ValueError("give --layer L or --depth FRACTION (one of the two)")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.on_bad_word not in ON_BAD_WORD:
            raise ValueError(f"on_bad_word must be one of {ON_BAD_WORD}, got {self.on_bad_word!r}")


@dataclass(frozen=True)
class GradeConfig:
    """Grade a results folder's replies into RESULTS/grades.jsonl."""

    results: str = arg("results folder", positional=True)
    grader: str = opt(
        "rule", "rule (deterministic), fonseca (Fonseca Rivera's four criteria) or judge (an LLM)"
    )
    judge: str = opt("", "with --grader judge: openai:MODEL, anthropic:MODEL or local:MODEL")
    attempts: int = opt(3, "judge calls per reply before an ERROR")
    workers: int = opt(1, "parallel judge calls")
    batch_size: int = opt(64, "replies per batch written")
    device: str = opt("cpu", "device of a local judge model")
    rubrics: str = opt(
        "", "with --grader judge: a prompt pack file (TOML/JSON) whose rubrics the judge uses"
    )

    def __post_init__(self) -> None:
        if self.rubrics and self.grader != "judge":
            raise ValueError("--rubrics gives the judge its rubrics: use it with --grader judge")
        if self.grader not in GRADERS:
            raise ValueError(f"grader must be one of {GRADERS}, got {self.grader!r}")
        if (self.grader == "judge") != bool(self.judge):
            raise ValueError(
                "--grader judge needs --judge PROVIDER:MODEL (e.g. openai:gpt-4o-mini), "
                "and --judge needs --grader judge"
            )
        if self.attempts < 1 or self.workers < 1 or self.batch_size < 1:
            raise ValueError("--attempts, --workers and --batch-size must be at least 1")


@dataclass(frozen=True)
class NoiseConfig:
    """Godet's noise controls into RESULTS/noise.csv (mechintro report shows them)."""

    model: str = arg(MODEL_HELP)
    out: str = arg("results folder (a sweep's, to report both together)")
    revision: str = opt("", REVISION_HELP)
    layers: tuple[int, ...] = opt((), "block indices")
    depths: tuple[float, ...] = opt((), "or depth fractions, e.g. 0.6 (layer int(n·f), as Godet)")
    strengths: tuple[float, ...] = opt(
        tuple(float(s) for s in range(11)), "raw strengths; 0 is the baseline (Godet: 0 to 10)"
    )
    concepts: tuple[str, ...] = opt((), "Lindsey concept vectors (default: the all-caps vector)")
    baseline: tuple[str, ...] = opt(
        (),
        "baseline words of the concept vectors (default: a model organism's own object words, "
        "else the method's list)",
    )
    battery: int = opt(20, "control questions with known answers: the first N of the 20")
    controls: tuple[str, ...] = opt(
        (), "or the control questions by id (Godet's: one_plus_one_is_three); overrides --battery"
    )
    yes: str = opt("Yes", "the Yes token of b (Godet's model: ' Yes')")
    no: str = opt("No", "the No token of b (Godet's model: ' No')")
    n_random: int = opt(1, "norm-matched random vectors per vector (the baseline)")
    seed: int = opt(0, "seed of the random vectors")
    backend: str = opt("bridge", "TransformerLens model class")
    dtype: str = opt("float32", "weights and activations dtype")
    device: str = opt("cpu", "torch device, e.g. cuda")
    batch_size: int = opt(64, "readouts per forward pass")

    def __post_init__(self) -> None:
        _check_model_options(self.backend, self.dtype, self.batch_size)
        if not self.layers and not self.depths:
            raise ValueError("give --layers L1 L2 ... or --depths F1 F2 ...")
        if 0.0 not in self.strengths:
            raise ValueError("--strengths must include 0: Δb is measured from it")
        if not 1 <= self.battery <= 20:
            raise ValueError("--battery must be between 1 and 20")
        from mechintro.experiments.protocols.noise import CONTROL_BATTERY

        ids = [q.id for q in CONTROL_BATTERY]
        unknown = [c for c in self.controls if c not in ids]
        if unknown:
            raise ValueError(f"unknown --controls {unknown}: use ids of {ids}")


@dataclass(frozen=True)
class ReportConfig:
    """Write the HTML report of a results folder."""

    results: str = arg("results folder", positional=True)
    out: str = opt("", "HTML file (default RESULTS/report.html)")
    grader: str = opt("", "whose grades: rule, judge:openai:MODEL... (default: the most)")
    title: str = opt("", "page title")
    max_examples: int = opt(30, "example replies shown")
    control_protocols: tuple[str, ...] = opt((), "protocols whose readout is a control question")
    noise: str = opt("", "noise-control table (default: RESULTS/noise.csv if there)")


@dataclass(frozen=True)
class ViewerConfig:
    """Serve a results folder's attribution graphs in mechintro's viewer, on this machine."""

    dir: str = arg(
        "a results folder with a viewer folder (a demo run's circuits/viewer), or that folder",
        positional=True,
    )
    port: int = opt(0, "port to serve on (0: a free port)")
    host: str = opt("127.0.0.1", "address to serve on: this machine only")
    no_browser: bool = opt(False, "print the address, do not open a browser")

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535, got {self.port!r}")
        if self.host != LOCALHOST:
            raise ValueError(f"--host must be {LOCALHOST}: the viewer serves this machine only")


@dataclass(frozen=True)
class RunCommandConfig:
    """Run the experiments of one config file, of any kind (docs/protocols.md §10)."""

    config: str = arg("the config: experiment, model, parameters (see examples/)", positional=True)
    out: str = opt("", "results folder (default: the config's out)")
    small: bool = opt(False, "a reduced size, for CI: every step, few trials")
    yes: bool = opt(False, "rerun into a folder that holds a finished run of another configuration")
