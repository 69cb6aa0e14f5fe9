"""What a ``mechintro run`` config says, checked before any model loads (docs/protocols.md
§10): the table of kinds (:data:`KINDS`: each kind's runner, preset kind and check), the
config's experiments as :class:`Entry` values (:func:`entries`; a study's ``[[experiments]]``
and a ``stages`` kind's checkpoints too), presets applied under the config's own parameters,
and every parameter table checked (:func:`check_params`), an unknown key refused with the
valid ones named. :mod:`mechintro.app.run_command` runs the entries.

Example::

    from mechintro.app.options import read_config

    (entry,) = entries(read_config("examples/lindsey.toml"), "examples/lindsey.toml")
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app import kinds as K
from mechintro.app.options import DTYPES, UsageError

if TYPE_CHECKING:
    import pandas as pd


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
        stage_entries(params, {})
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
        stage_entries(params, merged)
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


def stage_entries(
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
