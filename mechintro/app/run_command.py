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

import json
import logging
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app import kinds as K
from mechintro.app.options import UsageError, read_config
from mechintro.app.run_entries import (
    DISPATCH,
    ENTRY_KEYS,
    KINDS,
    MODEL_KEYS,
    STAGE_KEYS,
    TOP_KEYS,
    Entry,
    Kind,
    check_params,
    entries,
    resolve,
    stage_entries,
)
from mechintro.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel

__all__ = [
    "DISPATCH",
    "ENTRY_KEYS",
    "KINDS",
    "MODEL_KEYS",
    "RECORD_FILE",
    "REPORT_FILE",
    "RUN_PAGE",
    "STAGE_KEYS",
    "TOP_KEYS",
    "Entry",
    "Kind",
    "check_params",
    "entries",
    "execute",
    "load",
    "main",
    "read_config",
    "resolve",
    "run_config",
    "run_stages",
    "template_note",
]

logger = logging.getLogger("mechintro")

RECORD_FILE = "run.json"
REPORT_FILE = "report.html"
RUN_PAGE = "run.html"


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


def run_stages(entry: Entry, out: Path, *, small: bool, yes: bool) -> pd.DataFrame:
    """``experiment = "stages"``: the inner experiment on every checkpoint (its label, model
    and revision), each into ``out/LABEL`` (finished ones not reloaded), stacked into one
    table with ``checkpoint``, ``source`` and ``revision`` first."""
    from mechintro.training.checkpoints import compare_checkpoints

    stages = stage_entries(entry.params, entry.given)
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
