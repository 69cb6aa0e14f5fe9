"""``mechintro run CONFIG``: any experiment of the four studies from one config file.

A config names the experiment, the model and the experiment's parameters (docs/protocols.md
§10)::

    experiment = "sweep"             # a kind of KINDS
    model = "builtin:organism"       # Hub name, folder, .gguf, builtin:NAME
    revision = "stage1-step1000"     # optional: a Hub branch, tag or commit
    backend = "bridge"               # dtype, device, batch_size as well
    preset = "macar-detection"       # optional: a study's parameters (mechintro.presets)

    [sweep]                          # the parameters, in a table named after the kind
    concepts = ["horse", "whale"]
    layers = [3]

A study that needs several experiments lists them as ``[[experiments]]`` entries, each with
its own ``experiment``, ``name`` (the subfolder, default the kind), optional model keys and
preset (the top-level ones are their defaults) and parameter table; they run in order into
``OUT/NAME``, one model load shared by consecutive entries of the same model (an entry that
trains the model in place ends the sharing). Every table of every entry is checked before any
model loads: an unknown key is refused with the valid ones named.

Each experiment writes into its folder its table (``KIND.csv``, atomically), ``run.json``
(the config, the resolved preset with its source, the parameters as run, the model with its
revision, notes, library versions, timings) and a page with the run, its notes and the
table (``report.html``; for a sweep ``run.html``, beside the sweep's own ``report.html``).
Resuming: sweeps resume trial by trial (rerun the same command); a folder whose ``run.json``
says finished, for the same configuration, is not recomputed; other kinds rerun from their
start (docs/protocols.md §10 states each kind's).

A tokenizer without a chat template (a base checkpoint) is detected after loading: sweeps then
run the raw dialogue format and the ``fonseca`` vector method, and the note ("no chat
template: raw format, method fonseca") is logged, written in ``run.json`` and ``spec.json``,
and shown on the run's page (``report.html``, or ``run.html`` beside a sweep's report).

Example::

    main({"config": "examples/lindsey.toml", "out": "runs/lindsey", "small": True})
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app import kinds as K
from mechintro.app.options import DTYPES, UsageError, read_config
from mechintro.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel

logger = logging.getLogger("mechintro")

RECORD_FILE = "run.json"
REPORT_FILE = "report.html"
RUN_PAGE = "run.html"


@dataclass(frozen=True)
class Kind:
    """One kind of experiment: its runner (``"module:function"``, imported when it runs),
    the preset kind whose presets apply, and how its parameter table is checked."""

    target: str
    preset_kind: str | None = None
    check: Callable[[Mapping[str, Any]], Any] | None = None
    config_class: str | None = None  # "module:Class" the parameters build, where it exists
    ours: bool = True  # the runner takes batch_size
    sweep: bool = False  # the folder is a sweep's: its report is the sweep report
    trains: bool = False  # changes the model in place


def _check_train(cls_path: str, where: str) -> Callable[[Mapping[str, Any]], Any]:
    def check(cfg: Mapping[str, Any]) -> Any:
        return K.split_train(cfg, _import(cls_path, where), where)

    return check


KINDS: dict[str, Kind] = {
    "sweep": Kind("mechintro.app.kinds:run_sweep_kind", "sweep", K.sweep_spec, sweep=True),
    "intention": Kind(
        "mechintro.app.kinds:run_intention_kind",
        "sweep",
        lambda c: K.sweep_spec(c, fixed=K.INTENTION_FIXED),
        sweep=True,
    ),
    "noise": Kind("mechintro.app.kinds:run_noise_kind", "noise", K.noise_config),
    "patch": Kind(
        "mechintro.app.kinds:run_patch_kind",
        None,
        lambda c: K.patch_config(c, Path("-"), model="-"),
    ),
    "intentional-control": Kind(
        "mechintro.app.kinds:run_control_kind",
        None,
        lambda c: K.build(K.ControlParams, c, "intentional-control"),
    ),
    "train-lora": Kind(
        "mechintro.app.kinds:run_lora_kind",
        "lora",
        _check_train("mechintro.training.lora:LoRAConfig", "train-lora"),
        trains=True,
    ),
    "train-bias": Kind(
        "mechintro.app.kinds:run_bias_kind",
        "bias",
        _check_train("mechintro.training.bias:BiasConfig", "train-bias"),
        trains=True,
    ),
    "train-dpo": Kind(
        "mechintro.app.kinds:run_dpo_kind",
        None,
        _check_train("mechintro.training.preference:PreferenceConfig", "train-dpo"),
        trains=True,
    ),
    "circuits": Kind(
        "mechintro.app.kinds:run_circuits_kind",
        None,
        lambda c: K.build(K.CircuitParams, c, "circuits"),
    ),
    "transcoder-r2": Kind(
        "mechintro.app.kinds:run_r2_kind",
        None,
        lambda c: K.sweep_spec(K.build(K.R2Params, c, "transcoder-r2").sweep),
    ),
    "abliteration": Kind(
        "mechintro.analysis.directions.abliteration:run_abliteration",
        "abliteration",
        config_class="mechintro.analysis.directions.abliteration:AbliterationConfig",
        ours=False,
    ),
    "geometry": Kind(
        "mechintro.experiments.geometry:run_geometry",
        "geometry",
        config_class="mechintro.experiments.geometry:GeometryConfig",
        ours=False,
    ),
    "dpo-grid": Kind(
        "mechintro.training.preference:run_dpo_grid",
        "dpo-grid",
        config_class="mechintro.training.preference:DPOGridConfig",
        ours=False,
        trains=True,
    ),
    "stages": Kind("mechintro.app.run_command:run_stages"),
}

#: kind -> "module:function" of its runner
DISPATCH: dict[str, str] = {k: v.target for k, v in KINDS.items()}

MODEL_KEYS: tuple[str, ...] = ("model", "revision", "backend", "dtype", "device", "batch_size")
ENTRY_KEYS: tuple[str, ...] = ("experiment", "name", "preset", *MODEL_KEYS)
TOP_KEYS: tuple[str, ...] = (*ENTRY_KEYS, "out", "experiments")
STAGE_KEYS: tuple[str, ...] = ("experiment", "checkpoints")


def _import(target: str, what: str) -> Any:
    """The object ``module:name`` names; a clear error if this install lacks it."""
    module, _, name = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UsageError(
            f"experiment {what!r} needs {target}, which this install of mechintro does not "
            f"provide ({e}): update mechintro, or run another experiment"
        ) from None
    return obj


def resolve(kind: str) -> Callable[..., pd.DataFrame]:
    """The runner of experiment ``kind`` (imported now; a clear error if it is missing)."""
    if kind not in KINDS:
        raise UsageError(f"unknown experiment {kind!r}: use one of {sorted(KINDS)}")
    fn = _import(KINDS[kind].target, kind)
    if not callable(fn):
        raise UsageError(f"experiment {kind!r}: {KINDS[kind].target} is not a function")
    return fn


# ---------------------------------------------------------------------------------------------
# the config: entries, presets, checks


@dataclass(frozen=True)
class Entry:
    """One experiment of a config, resolved: kind, folder name, model keys, preset, params."""

    kind: str
    name: str
    model: str
    revision: str | None
    backend: str
    dtype: str
    device: str
    batch_size: int
    params: dict[str, Any]
    preset: dict[str, Any] | None
    given: dict[str, Any]  # the entry as the config wrote it (top-level defaults merged)

    @property
    def load_key(self) -> tuple[Any, ...]:
        return (self.model, self.revision, self.backend, self.dtype, self.device)

    def key(self, small: bool) -> str:
        """A hash of everything that determines the result (not the batch size)."""
        data = {**dataclasses.asdict(self), "small": small}
        for k in ("given", "batch_size"):
            data.pop(k)
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _with_preset(
    kind: str, params: dict[str, Any], name: str | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``params`` over the preset's fields (and, for sweeps, its depths and word list where
    the config gives no layers or concepts)."""
    if not name:
        return params, None
    from mechintro.presets import get_preset

    try:
        preset = get_preset(name)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    want = KINDS[kind].preset_kind
    if preset.kind != want:
        raise UsageError(
            f"preset {name!r} configures {preset.kind!r} experiments, not {kind!r}"
            + (f" (its presets are of kind {want!r})" if want else " (no preset applies)")
        )
    base = dict(preset.fields)
    if want == "sweep":
        base.update({k: v for k, v in preset.extras.items() if k in K.SWEEP_EXTRAS})
        for given in (("layers", "depths"), ("concepts", "word_list")):
            if set(given) & set(params):  # the config's own layers (or concepts) replace both
                for k in given:
                    base.pop(k, None)
    record = {
        "name": preset.name,
        "kind": preset.kind,
        "fields": dict(preset.fields),
        "extras": dict(preset.extras),
        "model": preset.model,
        "source": preset.source,
    }
    return {**base, **params}, record


def check_params(kind: str, params: Mapping[str, Any]) -> None:
    """Check ``params`` of experiment ``kind`` without a model (UsageError naming the fix)."""
    spec = KINDS[kind]
    if kind == "stages":
        _stage_entries(params, {})
        return
    resolve(kind)  # its runner exists in this install
    if spec.check is not None:
        spec.check(params)
    elif spec.config_class is not None:
        cls = _import(spec.config_class, kind)
        if dataclasses.is_dataclass(cls):
            K.build(cls, params, kind)


def _entry(raw: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> Entry:
    unknown = sorted(set(raw) - set(ENTRY_KEYS) - set(KINDS))
    if unknown:
        raise UsageError(
            f"{where}: unknown keys {unknown}: valid keys are {list(ENTRY_KEYS)} and a "
            f"parameter table named after the experiment ({', '.join(sorted(KINDS))})"
        )
    merged = {**{k: v for k, v in defaults.items() if k in MODEL_KEYS}, **raw}
    kind = merged.get("experiment")
    if kind not in KINDS:
        raise UsageError(f"{where}: experiment = {kind!r}: use one of {sorted(KINDS)}")
    others = sorted(set(raw) & set(KINDS) - {kind})
    if others:
        raise UsageError(f"{where}: tables {others} do not belong to experiment {kind!r}")
    params = merged.get(kind, {})
    if not isinstance(params, dict):
        raise UsageError(f"{where}: [{kind}] must be a table of parameters")
    if not merged.get("model") and kind != "stages":
        raise UsageError(f'{where}: give model = "..." (a Hub name, folder or builtin:organism)')
    dtype = str(merged.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise UsageError(f"{where}: dtype must be one of {DTYPES}, got {dtype!r}")
    backend = str(merged.get("backend", "bridge"))
    from mechintro.models import BACKENDS

    if backend not in BACKENDS:
        raise UsageError(f"{where}: backend must be one of {BACKENDS}, got {backend!r}")
    size = merged.get("batch_size", 32)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"{where}: batch_size must be a positive int, got {size!r}")
    if kind == "stages":
        _stage_entries(params, merged)
    params, preset = _with_preset(kind, dict(params), merged.get("preset"))
    entry = Entry(
        kind=kind,
        name=str(merged.get("name", kind)),
        model=str(merged.get("model", "")),
        revision=str(merged["revision"]) if merged.get("revision") else None,
        backend=backend,
        dtype=dtype,
        device=str(merged.get("device", "cpu")),
        batch_size=size,
        params=params,
        preset=preset,
        given=dict(merged),
    )
    if kind != "stages":
        try:
            check_params(kind, params)
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
    return entry


def entries(config: Mapping[str, Any], where: str) -> list[Entry]:
    """Every experiment of a config, checked (no model is loaded)."""
    unknown = sorted(set(config) - set(TOP_KEYS) - set(KINDS))
    if unknown:
        hint = ""
        if "spec" in unknown:
            hint = (
                ' (a `mechintro sweep` config: add experiment = "sweep" and rename [spec] to '
                "[sweep], or run it with mechintro sweep --config)"
            )
        raise UsageError(f"{where}: unknown keys {unknown}: valid keys are {list(TOP_KEYS)}" + hint)
    listed = config.get("experiments")
    if listed is None:
        return [_entry({k: v for k, v in config.items() if k != "out"}, {}, where)]
    if "experiment" in config:
        raise UsageError(f"{where}: give experiment = ... or [[experiments]], not both")
    if not isinstance(listed, list) or not listed:
        raise UsageError(f"{where}: experiments must be a non-empty list of tables")
    out = [_entry(e, config, f"{where} [[experiments]] #{i + 1}") for i, e in enumerate(listed)]
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"{where}: experiments named {dupes} twice: give each a distinct name")
    return out


# ---------------------------------------------------------------------------------------------
# running


def load(entry: Entry, revision: str | None = None, model: str | None = None) -> TLModel:
    """The entry's model, at its revision (``model``: another model, at ``revision``)."""
    from mechintro.app.loading import load as load_named

    name, rev = model or entry.model, revision if model else entry.revision
    return load_named(name, entry.backend, entry.dtype, entry.device, revision=rev)


def template_note(model: TLModel, entry: Entry) -> str | None:
    """The note on a tokenizer without a chat template (None if it has one), logged loudly."""
    from mechintro.experiments.sweeps import has_chat_template, without_chat_template
    from mechintro.models import tokenizer_of

    tok = tokenizer_of(model)
    if has_chat_template(tok):
        return None
    note = "no chat template: prompts that need one fail (this experiment has no raw form)"
    if KINDS[entry.kind].sweep:
        fixed = K.INTENTION_FIXED if entry.kind == "intention" else None
        try:
            _, found = without_chat_template(K.sweep_spec(entry.params, fixed=fixed), tok)
        except ValueError as e:
            raise UsageError(f"{entry.model}: {e}") from None
        note = found or "no chat template: every protocol of the sweep is raw text already"
    logger.warning("%s: %s", entry.model, note)
    return note


def _finished(out: Path, key: str, yes: bool) -> pd.DataFrame | None:
    """The table of a finished run of this configuration in ``out``, else None."""
    import pandas as pd

    path = out / RECORD_FILE
    if not path.is_file():
        return None
    rec = json.loads(path.read_text("utf-8"))
    if not rec.get("finished"):
        return None
    if rec.get("key") != key:
        if yes:
            logger.warning("%s holds a finished run of another configuration: rerunning", out)
            return None
        raise UsageError(
            f"{out} holds a finished run of another configuration ({path}): use a new --out, "
            "or --yes to run this one there"
        )
    table = out / rec["table"]
    return pd.read_csv(table) if table.is_file() and table.stat().st_size > 1 else pd.DataFrame()


def _record(entry: Entry, small: bool, **fields: Any) -> dict[str, Any]:
    from mechintro.record import library_versions

    return {
        "experiment": entry.kind,
        "name": entry.name,
        "config": entry.given,
        "params": entry.params,
        "preset": entry.preset,
        "small": small,
        "key": entry.key(small),
        "table": f"{entry.kind}.csv",
        "versions": library_versions(),
        **fields,
    }


def _write_record(out: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(out / RECORD_FILE, json.dumps(record, indent=2, default=str))


def _page(entry: Entry, out: Path, record: Mapping[str, Any], table: pd.DataFrame) -> None:
    """The run's page: the run, its notes, its table; ``report.html``, or ``run.html`` beside
    a sweep's own report."""
    from mechintro.html_page import Code, Section, html_report

    model = record.get("model") or {}
    head = [
        f"Experiment {entry.kind} on {model.get('name', entry.model)}"
        + (f" at revision {model.get('revision')}" if model.get("revision") else "")
        + f" ({entry.backend}, {entry.dtype}), {record.get('seconds', 0):.1f} s"
        + (", at the CI size (--small)" if record.get("small") else "")
        + ".",
        *(f"Note: {n}" for n in record.get("notes", [])),
    ]
    if entry.preset:
        head.append(f"Preset {entry.preset['name']}: {entry.preset['source']}")
    sections = [
        Section("Run", [*head, Code(json.dumps(entry.given, indent=2, default=str))]),
        Section("Results", [table if len(table) else "No rows."]),
    ]
    page = RUN_PAGE if KINDS[entry.kind].sweep else REPORT_FILE
    html_report(f"mechintro run: {entry.name}", sections, path=out / page)


def execute(
    entry: Entry, out: Path, *, small: bool, yes: bool, model: TLModel | None = None
) -> tuple[pd.DataFrame, TLModel | None]:
    """Run one entry into ``out`` (loading its model unless given); (table, the model)."""
    from mechintro.models import model_info

    out.mkdir(parents=True, exist_ok=True)
    key = entry.key(small)
    done = _finished(out, key, yes)
    if done is not None:
        logger.info("%s: finished before (%s), not recomputed", out, RECORD_FILE)
        return done, model
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if entry.kind == "stages":
        _write_record(out, _record(entry, small, started=started, finished=False))
        table = run_stages(entry, out, small=small, yes=yes)
        record = _record(entry, small, started=started)
    else:
        if model is None:
            model = load(entry)
        note = template_note(model, entry)
        info = model_info(model).to_dict()
        record = _record(entry, small, model=info, notes=[note] if note else [], started=started)
        _write_record(out, {**record, "finished": False})
        runner = resolve(entry.kind)
        kw: dict[str, Any] = {"small": small}
        if KINDS[entry.kind].ours:
            kw["batch_size"] = entry.batch_size
        table = runner(model, dict(entry.params), out, **kw)
    atomic_write_text(out / f"{entry.kind}.csv", table.to_csv(index=False))
    record.update(
        finished=True,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=time.perf_counter() - t0,
    )
    _write_record(out, record)
    _page(entry, out, record, table)
    return table, model


def _stage_entries(
    params: Mapping[str, Any], defaults: Mapping[str, Any]
) -> list[tuple[Any, Entry]]:
    """(checkpoint, the inner experiment's entry) per stage, checked."""
    from mechintro.training.checkpoints import Checkpoint

    unknown = sorted(set(params) - set(STAGE_KEYS) - set(KINDS))
    if unknown:
        raise UsageError(
            f"[stages]: unknown keys {unknown}: valid keys are {list(STAGE_KEYS)} and the inner "
            "experiment's parameter table"
        )
    inner = params.get("experiment")
    if inner not in KINDS or inner == "stages":
        raise UsageError(
            f"[stages]: experiment = {inner!r}: use one of {sorted(set(KINDS) - {'stages'})}"
        )
    checkpoints = params.get("checkpoints")
    if not isinstance(checkpoints, list) or not checkpoints:
        raise UsageError("[stages]: checkpoints must be a list of {label, model, revision} tables")
    out = []
    for i, c in enumerate(checkpoints):
        bad = sorted(set(c) - {"label", "model", "revision"}) if isinstance(c, dict) else ["?"]
        if bad or "label" not in c or "model" not in c:
            raise UsageError(
                f"[stages] checkpoint #{i + 1}: give label and model (and optionally revision)"
            )
        ck = Checkpoint(str(c["label"]), str(c["model"]), c.get("revision") or None)
        raw = {
            "experiment": inner,
            "name": ck.label,
            "model": ck.source,
            "revision": ck.revision,
            inner: params.get(inner, {}),
        }
        out.append((ck, _entry(raw, defaults, f"[stages] {ck.label}")))
    for what, keys in (
        ("labels", [ck.label for ck, _ in out]),
        ("checkpoints", [(ck.source, ck.revision) for ck, _ in out]),
    ):
        if len(set(keys)) != len(keys):
            raise UsageError(f"[stages]: two stages have the same {what}: {keys}")
    return out


def run_stages(entry: Entry, out: Path, *, small: bool, yes: bool) -> pd.DataFrame:
    """``experiment = "stages"``: the inner experiment on every checkpoint (its label, model
    and revision), each into ``out/LABEL`` (finished ones not reloaded), stacked into one
    table with ``checkpoint``, ``source`` and ``revision`` first."""
    from mechintro.training.checkpoints import compare_checkpoints

    stages = _stage_entries(entry.params, entry.given)
    by_label = {ck.label: e for ck, e in stages}
    by_source = {(ck.source, ck.revision): e for ck, e in stages}

    def done(ck: Any) -> pd.DataFrame | None:
        return _finished(out / ck.label, by_label[ck.label].key(small), yes)

    def loader(source: Any, revision: str | None = None) -> tuple[Entry, TLModel]:
        e = by_source[(source, revision)]
        return e, load(e)

    def run(loaded: tuple[Entry, TLModel]) -> pd.DataFrame:
        e, model = loaded
        return execute(e, out / e.name, small=small, yes=yes, model=model)[0]

    return compare_checkpoints([ck for ck, _ in stages], run, load=loader, done=done)


def run_config(
    config: str | Path, out: str | Path | None = None, *, small: bool = False, yes: bool = False
) -> dict[str, pd.DataFrame]:
    """Run every experiment of ``config`` into ``out`` (default: the config's ``out``);
    ``{name: table}``. A single experiment runs into ``out`` itself, several into
    ``out/NAME``."""
    data = read_config(config)
    target = out or data.get("out")
    if not target:
        raise UsageError(f'give --out DIR (or out = "DIR" in {config})')
    todo = entries(data, str(config))
    root = Path(target)
    several = "experiments" in data
    results: dict[str, pd.DataFrame] = {}
    model: TLModel | None = None
    loaded: tuple[Any, ...] | None = None
    for e in todo:
        if e.kind == "stages" or e.load_key != loaded:
            model, loaded = None, None
        folder = root / e.name if several else root
        logger.info("experiment %s (%s) into %s", e.name, e.kind, folder)
        table, model = execute(e, folder, small=small, yes=yes, model=model)
        loaded = None if KINDS[e.kind].trains or model is None else e.load_key
        if loaded is None:
            model = None
        results[e.name] = table
    return results


def main(args: Any) -> int:
    """``mechintro run``: ``args`` holds ``config``, ``out`` (None: the config's), ``small``
    and ``yes`` (a mapping or an argparse namespace)."""
    a = dict(args) if isinstance(args, Mapping) else vars(args)
    try:
        results = run_config(
            a["config"], a.get("out") or None, small=bool(a.get("small")), yes=bool(a.get("yes"))
        )
    except UsageError as e:
        print(f"mechintro run: error: {e}", file=sys.stderr)
        return 2
    for name, table in results.items():
        print(f"== {name}: {len(table)} rows")
        shown = [c for c in table.columns if not c.endswith(("_lo", "_hi")) and c[:2] != "k_"]
        if len(table):
            print(table[shown].head(12).round(3).to_string(index=False))
    return 0
