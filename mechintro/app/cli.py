"""The ``mechintro`` command. Options are derived from the config dataclasses (their fields,
defaults and documented meaning), so the command line and the library cannot drift apart.
The parser imports only those dataclasses, which import nothing heavy, and adds a command's
options when that command is used: ``--help`` is quick, and each command loads what it needs
when it runs.

    mechintro extract --model builtin:smollm2 --layer 18 --words Dust Peace --out vectors
    mechintro sweep --config examples/smollm2.toml --out runs/smol    # rerun to resume
    mechintro grade runs/smol                                        # rule grader
    mechintro report runs/smol                                       # runs/smol/report.html
    mechintro demo --out demo_out
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import shlex
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app import organism_commands
from mechintro.app.epilogs import EPILOGS
from mechintro.app.kinds import NOISE_FILE
from mechintro.app.options import (
    DTYPES,
    GRADERS,
    LOCALHOST,
    ExtractConfig,
    GradeConfig,
    LazyParser,
    NoiseConfig,
    ReportConfig,
    RunCommandConfig,
    RunConfig,
    UsageError,
    ViewerConfig,
    add_fields,
    build_config,
    read_config,
)
from mechintro.app.patch_sweep import PatchConfig
from mechintro.choices import BACKENDS, METHODS, ON_BAD_WORD, UNITS, OnBadWord, PositionMode
from mechintro.experiments.sweeps.spec import SweepSpec
from mechintro.organism.configs import DemoConfig
from mechintro.progress import TqdmHandler

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("mechintro")


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
    run = build_config(RunConfig, run_data)
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


def _load(
    model: str, backend: str, dtype: str, device: str, n_devices: int = 1, revision: str = ""
) -> Any:
    from mechintro.app.loading import load

    return load(model, backend, dtype, device, revision=revision or None, n_devices=n_devices)


def cmd_extract(args: Mapping[str, Any]) -> int:
    from mechintro.models import layer_at_depth
    from mechintro.vectors import extract_vectors, word_list

    cfg = build_config(ExtractConfig, args)
    try:
        words = list(cfg.words) or word_list(cfg.word_list)
    except ValueError as e:
        raise UsageError(str(e)) from None
    model = _load(cfg.model, cfg.backend, cfg.dtype, cfg.device, revision=cfg.revision)
    layer = cfg.layer if cfg.layer is not None else layer_at_depth(model, float(cfg.depth or 0))
    vecs = extract_vectors(
        model,
        words,
        layer=layer,
        method=cfg.method,
        baseline=list(cfg.baseline) or None,
        cache_dir=cfg.out,
        batch_size=cfg.batch_size,
        on_bad_word=typing.cast(OnBadWord, cfg.on_bad_word),  # checked by the config
    )
    base = tuple(next(iter(vecs.values())).baseline or ())
    more = ", ..." if len(base) > 8 else ""
    print(f"{len(vecs)} {cfg.method} vectors at layer {layer} of {cfg.model}, cached in {cfg.out}")
    print(f"baseline: {len(base)} words ({', '.join(base[:8])}{more})")
    print(f"{'word':<20} {'norm':>10} {'norm/resid':>11}")
    for w, v in vecs.items():
        ratio = f"{v.norm_ratio:.3f}" if v.norm_ratio is not None else "–"
        flag = "  !" if v.problems else ""
        print(f"{w:<20} {v.norm:>10.3f} {ratio:>11}{flag}")
    for problem in dict.fromkeys(p for v in vecs.values() for p in v.problems):
        print(f"! {problem}")
    return 0


def cmd_sweep(args: Mapping[str, Any]) -> int:
    from mechintro.experiments.distributed import (
        init_from_env,
        launch,
        rank_device,
        shutdown,
        torchrun_command,
        without_option,
    )
    from mechintro.experiments.sweeps import SPEC_FILE, load_spec, plan, run_sweep
    from mechintro.memory import check_before_loading
    from mechintro.models import layer_at_depth

    args = dict(args)
    argv = args.pop("argv", None)
    run, spec_data, where = sweep_settings(args)
    if not run.out:
        raise UsageError('give --out DIR (or out = "DIR" in the config file)')
    if run.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the ranks: each runs this
        if argv is None:
            raise UsageError("--nproc relaunches the command line: call main(argv) with it")
        child = without_option(argv, "--nproc")  # the ranks know their world from torchrun
        cmd = shlex.join(torchrun_command(child, run.nproc))
        logger.info("starting %d ranks: %s", run.nproc, cmd)
        return launch(child, run.nproc)
    ranks = init_from_env()
    if ranks.world_size > 1 and run.n_devices > 1:
        raise UsageError(
            "--nproc with --n-devices (ranks that each split a model) is not supported: use "
            "--nproc N with a model that fits one GPU, or one process with --n-devices N"
        )
    device = rank_device(run.device, ranks)
    out = Path(run.out)
    stored = out / SPEC_FILE
    if not spec_data and stored.exists():  # `mechintro sweep --out DIR` resumes DIR's sweep
        meta = json.loads(stored.read_text("utf-8"))
        spec = load_spec(out)
        model_name = run.model or meta["model"]["name"]
        logger.info("resuming the sweep stored in %s", stored)
        check_before_loading(
            model_name, run.n_devices, device, meta["model"]["dtype"], spec.max_new_tokens
        )
        revision = meta["model"].get("revision") or ""
        if run.revision and run.revision != revision:
            raise UsageError(
                f"{out} holds a sweep of {model_name} at revision {revision or 'main'}: resume "
                "it without --revision, or start another sweep in a new folder"
            )
        model = _load(
            model_name,
            meta["model"]["backend"],
            meta["model"]["dtype"],
            device,
            run.n_devices,
            revision,
        )
    else:
        _spec(spec_data, where, layers=[0] if run.depths else ())  # fail before loading
        if not run.model:
            raise UsageError('give --model M (or model = "M" in the config file)')
        new_tokens = int(spec_data.get("max_new_tokens", 100))
        check_before_loading(run.model, run.n_devices, device, run.dtype, new_tokens)
        model = _load(run.model, run.backend, run.dtype, device, run.n_devices, run.revision)
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
    shutdown()
    if not ranks.is_main:
        return 0
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
    import mechintro.experiments.grading as grading

    return grading


def cmd_grade(args: Mapping[str, Any]) -> int:
    from mechintro.app.report import JUDGE_CACHE_FILE, grade_results
    from mechintro.experiments.grading import FonsecaGrader, JudgeGrader, RuleGrader

    cfg = build_config(GradeConfig, args)
    grader: Any
    if cfg.grader == "rule":
        grader = RuleGrader()
    elif cfg.grader == "fonseca":
        grader = FonsecaGrader()
    else:
        provider, _, name = cfg.judge.partition(":")
        if provider not in JUDGE_CLIENTS or not name:
            raise UsageError(
                f"--judge {cfg.judge!r}: use PROVIDER:MODEL with PROVIDER one of "
                f"{sorted(JUDGE_CLIENTS)}, e.g. openai:gpt-4o-mini or local:Qwen/Qwen3-8B"
            )
        from mechintro.experiments.packs import load_pack

        pack = load_pack(cfg.rubrics) if cfg.rubrics else None  # checked before any call
        grader = JudgeGrader(
            JUDGE_CLIENTS[provider](name, cfg),
            pack=pack,
            attempts=cfg.attempts,
            workers=cfg.workers,
            cache_path=Path(cfg.results) / JUDGE_CACHE_FILE,
        )
    summary = grade_results(cfg.results, grader, batch_size=cfg.batch_size)
    print(summary)
    return 0


def read_table(path: str) -> pd.DataFrame:
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


def _noise_table(cfg: ReportConfig) -> pd.DataFrame | None:
    if cfg.noise:
        return read_table(cfg.noise)
    default = Path(cfg.results) / NOISE_FILE
    return read_table(str(default)) if default.is_file() else None


def cmd_report(args: Mapping[str, Any]) -> int:
    from mechintro.app.report import write_report

    cfg = build_config(ReportConfig, args)
    path = write_report(
        cfg.results,
        cfg.out or None,
        grader=cfg.grader or None,
        title=cfg.title or None,
        max_examples=cfg.max_examples,
        controls=cfg.control_protocols,
        noise=_noise_table(cfg),
    )
    print(f"wrote {path}")
    return 0


def cmd_noise(args: Mapping[str, Any]) -> int:
    from mechintro.app.kinds import run_noise

    cfg = build_config(NoiseConfig, args)
    model = _load(cfg.model, cfg.backend, cfg.dtype, cfg.device, revision=cfg.revision)
    out = Path(cfg.out)
    cells = run_noise(model, cfg, out, batch_size=cfg.batch_size)
    shown = cells[cells.strength > 0].dropna(axis=1, how="all")  # one control: no spread
    print(shown.round(3).to_string(index=False))
    print(f"wrote {out / NOISE_FILE}; mechintro report {out} shows it")
    return 0


def cmd_patch(args: Mapping[str, Any]) -> int:
    from mechintro.app.patch_sweep import run_patch_sweep

    cfg = build_config(PatchConfig, args)
    model = _load(cfg.model, cfg.backend, cfg.dtype, cfg.device, revision=cfg.revision)
    frames = run_patch_sweep(cfg, model)
    for component, frame in frames.items():
        top = frame.reindex(frame.effect.abs().sort_values(ascending=False).index).head(5)
        print(component, top[["label", "effect"]].round(4).to_string(index=False), sep="\n")
    print(f"wrote {cfg.out}/patch.html")
    return 0


def cmd_demo(args: Mapping[str, Any]) -> int:
    from mechintro.organism.demo import run_demo

    cfg = build_config(DemoConfig, args)
    result = run_demo(cfg)
    logger.info("wrote %s/report.html and metrics.json in %.1f s", cfg.out, result.wall_seconds)
    return 0


def cmd_viewer(args: Mapping[str, Any]) -> int:
    from mechintro.app.viewer_command import main as viewer

    return int(viewer(dataclasses.asdict(build_config(ViewerConfig, args))))


def cmd_run(args: Mapping[str, Any]) -> int:
    from mechintro.app.run_command import main as run

    return int(run(dataclasses.asdict(build_config(RunCommandConfig, args))))


# ---------------------------------------------------------------------------------------------
# the parser

_FORMATTER = argparse.RawDescriptionHelpFormatter


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
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=LazyParser
    )

    def command(name: str, help_text: str, description: str, add: Callable[..., None]) -> None:
        """A command whose options ``add(parser)`` adds when it is used (LazyParser)."""
        sub.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=EPILOGS[name],
            formatter_class=_FORMATTER,
            add_options=add,
        )

    def fields(cls: type, **choices: Sequence[Any]) -> Callable[..., None]:
        return functools.partial(add_fields, cls=cls, choices=choices)

    def sweep_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="a .toml or .yaml config file (see below)")
        run = p.add_argument_group("how to run (config file: top-level keys)")
        add_fields(run, RunConfig, suppress=True, choices=_MODEL_CHOICES)
        grid = p.add_argument_group("the grid (config file: the [spec] table)")
        add_fields(grid, SweepSpec, suppress=True, choices=_SPEC_CHOICES)

    command(
        "extract",
        "extract concept vectors into a cache folder",
        "Extract concept vectors (docs/protocols.md §1) at the output of one block.",
        fields(ExtractConfig, method=list(METHODS), on_bad_word=ON_BAD_WORD, **_MODEL_CHOICES),
    )
    command(
        "sweep",
        "run a grid of trials into a results folder (resumable)",
        "Run a sweep: every concept x layer x strength x mode x trial number, plus\n"
        "uninjected controls, batched, seeded, saved as it goes (docs/protocols.md §3).",
        sweep_options,
    )
    command(
        "grade",
        "grade a results folder's replies (rules or an LLM judge)",
        "Grade replies (docs/protocols.md §4) into RESULTS/grades.jsonl.",
        fields(GradeConfig, grader=GRADERS),
    )
    command(
        "report",
        "write a self-contained HTML report of a results folder",
        "Write the HTML report of a results folder: metrics, figures, example replies.",
        fields(ReportConfig),
    )
    command(
        "noise",
        "Godet's noise controls: introspection vs control questions",
        "Read the Yes/No belief of the introspection question and of control questions with "
        "known answers under injection at the last prompt token (one forward, no "
        "generation), over layers × strengths, with norm-matched random vectors; writes "
        "OUT/noise.csv, which mechintro report OUT shows with the specificity.",
        fields(NoiseConfig, **_MODEL_CHOICES),
    )
    command(
        "patch",
        "activation patching: a layer x position x component sweep (resumable)",
        "Patch each component of a steered run with its unsteered value (knock-out), or the "
        "reverse (knock-in), over layers x positions; the metric is the Yes/No logit gap. "
        "Writes OUT/patch_COMPONENT.csv as each is done (rerun to resume) and OUT/patch.html.",
        fields(PatchConfig, **_MODEL_CHOICES),
    )
    command(
        "demo",
        "run the offline demo (DIR/report.html, DIR/metrics.json)",
        "Measure the built-in model organisms end to end, offline.",
        fields(DemoConfig),
    )
    command(
        "run",
        "run any experiment from one TOML config (resumable)",
        "Run the experiments one config file names (a sweep, noise controls, patching,\n"
        "training, circuits...): their model and parameters, the results in one folder.",
        fields(RunCommandConfig),
    )
    command(
        "viewer",
        "browse a results folder's attribution graphs in a local page",
        "Serve a results folder's attribution graphs in mechintro's viewer on 127.0.0.1\n"
        "(nothing is fetched from the internet) and open it in the default browser.",
        fields(ViewerConfig, host=[LOCALHOST]),
    )
    command(
        "organism",
        "build, train and measure the built-in organisms",
        "Build the built-in organisms, train introspection into the base one (LoRA, bias "
        "vector), evaluate an organism, train its transcoders (docs/organism.md).",
        organism_commands.add_commands,
    )
    return parser


_MODEL_CHOICES: dict[str, Sequence[str]] = {"backend": BACKENDS, "dtype": DTYPES}
_SPEC_CHOICES: dict[str, Sequence[str]] = {
    "method": list(METHODS),
    "unit": UNITS,
    "modes": [m.value for m in PositionMode],
}
COMMANDS: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "extract": cmd_extract,
    "sweep": cmd_sweep,
    "grade": cmd_grade,
    "report": cmd_report,
    "noise": cmd_noise,
    "patch": cmd_patch,
    "demo": cmd_demo,
    "run": cmd_run,
    "viewer": cmd_viewer,
    "organism": organism_commands.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    verbose = args.pop("verbose")
    logging.basicConfig(  # other libraries' warnings; with -v, everything
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=[TqdmHandler()],  # log lines above the progress bars, not on them
    )
    for ours in ("mechintro", "circuits"):  # our own progress and results
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.INFO)
    command = args.pop("command")
    if command == "sweep":  # --nproc relaunches it through torchrun
        args["argv"] = list(sys.argv[1:] if argv is None else argv)
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
