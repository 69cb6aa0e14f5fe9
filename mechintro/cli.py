"""The ``mechintro`` command. Options are derived from the config dataclasses (their fields,
defaults and documented meaning), so the command line and the library cannot drift apart.

    mechintro extract --model builtin:smollm2 --layer 18 --words Dust Peace --out vectors
    mechintro sweep --config examples/smollm2.toml --out runs/smol    # rerun to resume
    mechintro grade runs/smol                                        # rule grader
    mechintro report runs/smol                                       # runs/smol/report.html
    mechintro demo --out demo_out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechintro.demo import DemoConfig, run_demo
from mechintro.inject import UNITS, PositionMode
from mechintro.models import BACKENDS
from mechintro.sweeps import SweepSpec
from mechintro.vectors import METHODS

logger = logging.getLogger("mechintro")

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
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


MODEL_HELP = "model folder, .gguf file, Hub name, or builtin:smollm2"

# ---------------------------------------------------------------------------------------------
# the commands' configs


def _check_model_options(backend: str, dtype: str, batch_size: int) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


@dataclass(frozen=True)
class RunConfig:
    """How a sweep runs: the model, the results folder, batching. In a config file these are
    the top-level keys; the grid goes in a ``[spec]`` table of SweepSpec fields."""

    model: str = opt("", MODEL_HELP)
    out: str = opt("", "results folder (spec.json, trials.jsonl)")
    backend: str = opt("bridge", "TransformerLens model class")
    dtype: str = opt("float32", "weights and activations dtype")
    device: str = opt("cpu", "torch device, e.g. cuda")
    batch_size: int = opt(32, "trials per generation batch; results do not depend on it")
    depths: tuple[float, ...] = opt((), "also inject at these depth fractions (0.6: 60% deep)")

    def __post_init__(self) -> None:
        _check_model_options(self.backend, self.dtype, self.batch_size)
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        bad = [d for d in self.depths if not 0 <= d < 1]
        if bad:
            raise ValueError(f"depths are fractions in [0, 1), got {bad}")


@dataclass(frozen=True)
class ExtractConfig:
    """Extract concept vectors into a cache folder (a sweep reads RESULTS/vectors)."""

    model: str = arg(MODEL_HELP)
    out: str = arg("cache folder; use RESULTS/vectors to prefill a sweep's")
    words: tuple[str, ...] = opt((), "concept words")
    word_list: str = opt("", "a shipped word list instead (e.g. lindsey_concepts)")
    layer: int | None = opt(None, "block index")
    depth: float | None = opt(None, "or a depth fraction, e.g. 0.6")
    method: str = opt("lindsey", "extraction method (PROTOCOLS.md §1)")
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


@dataclass(frozen=True)
class GradeConfig:
    """Grade a results folder's replies into RESULTS/grades.jsonl."""

    results: str = arg("results folder", positional=True)
    grader: str = opt("rule", "rule (deterministic) or judge (an LLM)")
    judge: str = opt("", "with --grader judge: openai:MODEL, anthropic:MODEL or local:MODEL")
    attempts: int = opt(3, "judge calls per reply before an ERROR")
    workers: int = opt(1, "parallel judge calls")
    batch_size: int = opt(64, "replies per batch written")
    device: str = opt("cpu", "device of a local judge model")

    def __post_init__(self) -> None:
        if self.grader not in ("rule", "judge"):
            raise ValueError(f"grader must be rule or judge, got {self.grader!r}")
        if (self.grader == "judge") != bool(self.judge):
            raise ValueError(
                "--grader judge needs --judge PROVIDER:MODEL (e.g. openai:gpt-4o-mini), "
                "and --judge needs --grader judge"
            )
        if self.attempts < 1 or self.workers < 1 or self.batch_size < 1:
            raise ValueError("--attempts, --workers and --batch-size must be at least 1")


@dataclass(frozen=True)
class ReportConfig:
    """Write the HTML report of a results folder."""

    results: str = arg("results folder", positional=True)
    out: str = opt("", "HTML file (default RESULTS/report.html)")
    grader: str = opt("", "whose grades: rule, judge:openai:MODEL... (default: the most)")
    title: str = opt("", "page title")
    max_examples: int = opt(30, "example replies shown")
    control_protocols: tuple[str, ...] = opt((), "protocols whose readout is a control question")
    noise: str = opt("", "Godet noise controls (NoiseControls.run) as .csv/.jsonl/.parquet")


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


RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig))
SPEC_KEYS = tuple(f.name for f in dataclasses.fields(SweepSpec))


def sweep_settings(args: Mapping[str, Any]) -> tuple[RunConfig, dict[str, Any], str]:
    """(run config, spec fields, where they came from) from ``--config`` and flags; flags win.

    Unknown keys are refused with the valid ones named. The spec is checked here, before any
    model loads (layers from ``depths`` are filled in after loading).
    """
    args = dict(args)
    path = args.pop("config", None)
    data = read_config(path) if path else {}
    where = str(path) if path else "the command line"
    unknown = sorted(set(data) - {*RUN_KEYS, "spec"})
    if unknown:
        hint = ""
        if set(unknown) & set(SPEC_KEYS):
            hint = f"; sweep spec fields ({', '.join(set(unknown) & set(SPEC_KEYS))}) go in [spec]"
        raise UsageError(
            f"{where}: unknown keys {unknown}: valid top-level keys are {[*RUN_KEYS, 'spec']}"
            + hint
        )
    spec_data = data.get("spec", {})
    if not isinstance(spec_data, dict):
        raise UsageError(f"{where}: 'spec' must be a table of SweepSpec fields")
    bad = sorted(set(spec_data) - set(SPEC_KEYS))
    if bad:
        raise UsageError(f"{where}: unknown sweep spec fields {bad}: valid fields are {SPEC_KEYS}")
    run_data = {k: v for k, v in data.items() if k != "spec"}
    run_data.update({k: v for k, v in args.items() if k in RUN_KEYS})
    spec_data = {**spec_data, **{k: v for k, v in args.items() if k in SPEC_KEYS}}
    run = _build(RunConfig, run_data)
    return run, spec_data, where


def _spec(spec_data: Mapping[str, Any], where: str, layers: Sequence[int] = ()) -> SweepSpec:
    data = dict(spec_data)
    if layers:
        data["layers"] = sorted({*data.get("layers", ()), *layers})
    missing = [k for k in ("concepts", "layers") if k not in data]
    if missing:
        flags = " and ".join("--" + k for k in missing)
        raise UsageError(
            f"the sweep needs {missing}: give {flags} (layers may come from --depths), or a "
            "config file with them in its [spec] table (see examples/smollm2.toml)"
        )
    try:
        return SweepSpec.from_dict(data)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None


# ---------------------------------------------------------------------------------------------
# the commands


def _load(model: str, backend: str, dtype: str, device: str) -> Any:
    import torch

    from mechintro.models import Backend, load_model

    logger.info("loading %s (%s, %s, %s)", model, backend, dtype, device)
    kind = typing.cast(Backend, backend)  # checked by the config
    return load_model(model, backend=kind, dtype=getattr(torch, dtype), device=device)


def cmd_extract(args: Mapping[str, Any]) -> int:
    from mechintro.models import layer_at_depth
    from mechintro.vectors import extract_vectors, word_list

    cfg = _build(ExtractConfig, args)
    try:
        words = list(cfg.words) or word_list(cfg.word_list)
    except ValueError as e:
        raise UsageError(str(e)) from None
    model = _load(cfg.model, cfg.backend, cfg.dtype, cfg.device)
    layer = cfg.layer if cfg.layer is not None else layer_at_depth(model, float(cfg.depth or 0))
    vecs = extract_vectors(
        model, words, layer=layer, method=cfg.method, cache_dir=cfg.out, batch_size=cfg.batch_size
    )
    print(f"{len(vecs)} {cfg.method} vectors at layer {layer} of {cfg.model}, cached in {cfg.out}")
    print(f"{'word':<20} {'norm':>10} {'norm/resid':>11}")
    for w, v in vecs.items():
        ratio = f"{v.norm_ratio:.3f}" if v.norm_ratio is not None else "–"
        print(f"{w:<20} {v.norm:>10.3f} {ratio:>11}")
    return 0


def cmd_sweep(args: Mapping[str, Any]) -> int:
    from mechintro.models import layer_at_depth
    from mechintro.sweeps import SPEC_FILE, load_spec, plan, run_sweep

    run, spec_data, where = sweep_settings(args)
    if not run.out:
        raise UsageError('give --out DIR (or out = "DIR" in the config file)')
    out = Path(run.out)
    stored = out / SPEC_FILE
    if not spec_data and stored.exists():  # `mechintro sweep --out DIR` resumes DIR's sweep
        meta = json.loads(stored.read_text("utf-8"))
        spec = load_spec(out)
        model_name = run.model or meta["model"]["name"]
        logger.info("resuming the sweep stored in %s", stored)
        model = _load(model_name, meta["model"]["backend"], meta["model"]["dtype"], run.device)
    else:
        _spec(spec_data, where, layers=[0] if run.depths else ())  # fail before loading
        if not run.model:
            raise UsageError('give --model M (or model = "M" in the config file)')
        model = _load(run.model, run.backend, run.dtype, run.device)
        spec = _spec(spec_data, where, layers=[layer_at_depth(model, d) for d in run.depths])
    n = len(plan(spec))
    logger.info(
        "sweep of %d trials (%d concepts, layers %s, strengths %s, %d controls per protocol) "
        "into %s",
        n,
        len(spec.concepts),
        list(spec.layers),
        list(spec.strengths),
        spec.n_controls,
        out,
    )
    df = run_sweep(model, spec, out, batch_size=run.batch_size, progress=True)
    print(f"{len(df)} of {n} trials in {out}")
    print(f"next: mechintro grade {out} && mechintro report {out}")
    return 0


#: judge clients by provider: name -> (model name, GradeConfig) -> client
JUDGE_CLIENTS: dict[str, Callable[[str, GradeConfig], Any]] = {
    "openai": lambda name, cfg: _grading().openai_client(name),
    "anthropic": lambda name, cfg: _grading().anthropic_client(name),
    "local": lambda name, cfg: _grading().local_client(name, device=cfg.device),
}


def _grading() -> Any:
    import mechintro.grading as grading

    return grading


def cmd_grade(args: Mapping[str, Any]) -> int:
    from mechintro.grading import JudgeGrader, RuleGrader
    from mechintro.report import JUDGE_CACHE_FILE, grade_results

    cfg = _build(GradeConfig, args)
    grader: Any
    if cfg.grader == "rule":
        grader = RuleGrader()
    else:
        provider, _, name = cfg.judge.partition(":")
        if provider not in JUDGE_CLIENTS or not name:
            raise UsageError(
                f"--judge {cfg.judge!r}: use PROVIDER:MODEL with PROVIDER one of "
                f"{sorted(JUDGE_CLIENTS)}, e.g. openai:gpt-4o-mini or local:Qwen/Qwen3-8B"
            )
        grader = JudgeGrader(
            JUDGE_CLIENTS[provider](name, cfg),
            attempts=cfg.attempts,
            workers=cfg.workers,
            cache_path=Path(cfg.results) / JUDGE_CACHE_FILE,
        )
    summary = grade_results(cfg.results, grader, batch_size=cfg.batch_size)
    print(summary)
    return 0


def read_table(path: str) -> Any:
    """A DataFrame from a .csv, .jsonl or .parquet file."""
    import pandas as pd

    p = Path(path)
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet}
    if p.suffix == ".jsonl":
        return pd.read_json(p, lines=True)
    if p.suffix not in readers:
        raise UsageError(f"{p}: read .csv, .jsonl or .parquet tables only")
    if not p.is_file():
        raise UsageError(f"{p} not found")
    return readers[p.suffix](p)


def cmd_report(args: Mapping[str, Any]) -> int:
    from mechintro.report import write_report

    cfg = _build(ReportConfig, args)
    path = write_report(
        cfg.results,
        cfg.out or None,
        grader=cfg.grader or None,
        title=cfg.title or None,
        max_examples=cfg.max_examples,
        controls=cfg.control_protocols,
        noise=read_table(cfg.noise) if cfg.noise else None,
    )
    print(f"wrote {path}")
    return 0


def cmd_demo(args: Mapping[str, Any]) -> int:
    cfg = _build(DemoConfig, args)
    metrics = run_demo(cfg)
    logger.info("wrote %s/report.html and metrics.json in %.1f s", cfg.out, metrics["wall_seconds"])
    return 0


# ---------------------------------------------------------------------------------------------
# the parser

_FORMATTER = argparse.RawDescriptionHelpFormatter

EPILOGS = {
    "extract": """\
examples:
  mechintro extract --model builtin:smollm2 --depth 0.6 --words Dust Peace --out vectors
  mechintro extract --model ./organism --layer 3 --word-list lindsey_concepts --out runs/a/vectors

Vectors are cached by content (model fingerprint, layer, method, baseline): a second call is
free, and new words extend the cache. A sweep extracts into RESULTS/vectors by itself; pass
--out RESULTS/vectors to prepare it ahead.""",
    "sweep": """\
examples:
  mechintro sweep --config examples/smollm2.toml --out runs/smol
  mechintro sweep --config examples/smollm2.toml --out runs/smol --strengths 4 8 --device cuda
  mechintro sweep --model builtin:smollm2 --concepts Dust Peace --depths 0.6 \\
      --strengths 0 4 8 --trial-numbers 1 2 3 --n-controls 20 --out runs/quick
  mechintro sweep --out runs/smol            # resume the sweep stored in runs/smol

Resumable: trials are appended to RESULTS/trials.jsonl batch by batch; rerunning the same
command (after Ctrl-C, a crash, a lost machine) skips the trials already there and runs the
rest. A folder is bound to one spec and one model: another spec needs another --out.

A config file (.toml, or .yaml with PyYAML) holds the options below as top-level keys
(model, out, backend, dtype, device, batch_size, depths) and the sweep spec fields in a
[spec] table; command-line flags override the file:

  model = "builtin:smollm2"
  batch_size = 16
  [spec]
  concepts = ["Dust", "Peace"]
  layers = [18]
  strengths = [4.0, 8.0]
  n_controls = 8""",
    "grade": """\
examples:
  mechintro grade runs/smol
  mechintro grade runs/smol --grader judge --judge openai:gpt-4o-mini --workers 8
  mechintro grade runs/smol --grader judge --judge local:Qwen/Qwen3-8B --device cuda

Grades go to RESULTS/grades.jsonl, one record per (trial, rubric, grader): detection on every
trial, identification where detection is YES, forced identification on forced trials.
Append-only and resumable: a rerun grades only what is missing. A judge that fails after
--attempts tries is recorded as ERROR (never as NO): rates leave it out and count it, and the
next run retries it. Judge replies are cached in RESULTS/judge_cache.jsonl.""",
    "report": """\
examples:
  mechintro report runs/smol
  mechintro report runs/smol --grader judge:openai:gpt-4o-mini --out smol.html

One self-contained HTML file (opens offline): TPR, FPR, introspection and identification
rates with Wilson intervals per layer x strength and per concept, dose-response curves,
the belief shift of the introspection vs control questions (if the sweep recorded
readouts), metrics tables and example replies. Without stored grades, replies are graded
on the fly by the rule grader.""",
    "demo": """\
example:
  mechintro demo --out demo_out""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechintro",
        description="Inject concepts into a model's residual stream, ask whether it notices.",
        epilog="""\
a typical run:
  mechintro sweep --config examples/smollm2.toml --out runs/smol
  mechintro grade runs/smol
  mechintro report runs/smol

`mechintro COMMAND --help` explains each command.""",
        formatter_class=_FORMATTER,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=EPILOGS[name],
            formatter_class=_FORMATTER,
        )

    p = command(
        "extract",
        "extract concept vectors into a cache folder",
        "Extract concept vectors (PROTOCOLS.md §1) at the output of one block.",
    )
    add_fields(p, ExtractConfig, choices={"method": list(METHODS), **_MODEL_CHOICES})
    p = command(
        "sweep",
        "run a grid of trials into a results folder (resumable)",
        "Run a sweep: every concept x layer x strength x mode x trial number, plus\n"
        "uninjected controls, batched, seeded, saved as it goes (PROTOCOLS.md §3).",
    )
    p.add_argument("--config", metavar="FILE", help="a .toml or .yaml config file (see below)")
    run = p.add_argument_group("how to run (config file: top-level keys)")
    add_fields(run, RunConfig, suppress=True, choices=_MODEL_CHOICES)
    grid = p.add_argument_group("the grid (config file: the [spec] table)")
    add_fields(grid, SweepSpec, suppress=True, choices=_SPEC_CHOICES)
    p = command(
        "grade",
        "grade a results folder's replies (rules or an LLM judge)",
        "Grade replies (PROTOCOLS.md §4) into RESULTS/grades.jsonl.",
    )
    add_fields(p, GradeConfig, choices={"grader": ["rule", "judge"]})
    p = command(
        "report",
        "write a self-contained HTML report of a results folder",
        "Write the HTML report of a results folder: metrics, figures, example replies.",
    )
    add_fields(p, ReportConfig)
    p = command("demo", "run the offline demo (DIR/report.html, DIR/metrics.json)",
                "Measure the built-in model organisms end to end, offline.")  # fmt: skip
    add_fields(p, DemoConfig)
    return parser


_MODEL_CHOICES = {"backend": list(BACKENDS), "dtype": list(DTYPES)}
_SPEC_CHOICES = {
    "method": list(METHODS),
    "unit": list(UNITS),
    "modes": [m.value for m in PositionMode],
}
COMMANDS: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "extract": cmd_extract,
    "sweep": cmd_sweep,
    "grade": cmd_grade,
    "report": cmd_report,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    verbose = args.pop("verbose")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    command = args.pop("command")
    try:
        return COMMANDS[command](args)
    except UsageError as e:
        print(f"mechintro {command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ImportError, KeyError, RuntimeError) as e:
        if verbose:
            raise
        print(f"mechintro {command}: error: {e}", file=sys.stderr)
        print("(run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
