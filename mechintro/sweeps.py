"""Sweeps: a grid of trials, run in mixed batches, stored append-only, resumable at any moment.

A :class:`SweepSpec` names a grid (protocols × concepts × layers × strengths × position modes
× trial numbers × samples, plus uninjected controls) and the settings every trial shares
(temperature, reply length, vector method, strength unit, seed). :func:`plan` expands it into
:class:`Trial` values, each with a deterministic ``trial_id`` (a hash of everything that
determines its result) and its own sampling seed, so a trial's reply does not depend on the
batch it ran in (:func:`mechintro.generate.generate` draws each row's noise from its own seed).

:func:`run_sweep` runs the pending trials in batches that mix cells: different concepts,
strengths, trial numbers and controls side by side through per-row injections, and, where a
batch spans layers or modes, one :class:`~mechintro.inject.Injection` per (layer, mode) with
strength 0 (bit-identical to no injection) on the rows that belong elsewhere. Batches follow
the layer order, so most batches hook one layer; controls are spread evenly over them.

The results folder holds::

    spec.json        the spec, the model (name, fingerprint) and each protocol's prompt hash
    trials.jsonl     one JSON record per finished trial, appended batch by batch
    vectors/         the concept-vector cache (mechintro.vectors.extract_vectors)

Each batch's records are appended with one write, flushed and fsynced. A run stopped at any
moment (Ctrl-C, an exception, ``kill -9``, a power cut) loses at most the batch in flight:
on the next run the torn last line, if any, is cut off, the trial ids already present are
skipped, and the rest run. A folder is bound to one spec and one model: resuming with another
is refused. A lock file stops two processes from writing one folder.

Example::

    spec = SweepSpec(concepts=("Dust", "Peace"), layers=(20, 24), strengths=(2.0, 4.0),
                     trial_numbers=tuple(range(1, 11)), n_controls=20, max_new_tokens=100)
    df = run_sweep(model, spec, "runs/detection")  # rerun the same line to resume
    df.groupby(["layer", "strength"]).reply.count()
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mechintro.generate import generate, readout
from mechintro.inject import UNITS, Injection, PositionMode
from mechintro.io import atomic_write_text
from mechintro.models import TLModel, check_layer, fingerprint, model_info, tokenizer_of
from mechintro.prompts import Prompt, encode
from mechintro.protocols import detection
from mechintro.record import library_versions
from mechintro.vectors import METHODS, ConceptVector, extract_vectors

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
TRIALS_FILE = "trials.jsonl"
SPEC_FILE = "spec.json"
LOCK_FILE = ".lock"

PromptBuilder = Callable[["Trial"], Prompt]


def _sha(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _canon(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, ASCII, so equal content hashes equal."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# the grid


def _uniq(values: Sequence[Any], name: str) -> None:
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise ValueError(f"{name} lists {seen} more than once: give each value once")


@dataclass(frozen=True)
class SweepSpec:
    """A grid of detection-style trials and the settings they share (JSON-serialisable).

    Injected trials: every ``protocols × concepts × layers × strengths × modes ×
    trial_numbers`` cell, ``n_samples`` times. A strength of 0 gives a within-cell control
    (the concept's prompt, nothing added). ``n_controls`` uninjected trials per protocol
    (concept and layer ``None``) cycle through ``trial_numbers``.

    Args:
        concepts: concept words (vectors by ``method`` at each layer, or given to run_sweep).
        layers: block indices (``mechintro.models.layer_at_depth`` converts depth fractions).
        strengths: injection strengths in ``unit``; 0 = control.
        protocols: prompt builders by name: ``detection`` (Lindsey/Macar dialogue) and
            ``forced`` (the same with the forced-identification prefill), or names given to
            ``run_sweep(prompts=...)``.
        modes: position modes (:class:`~mechintro.inject.PositionMode` values).
        trial_numbers: the ``n`` of ``Trial n`` (Lindsey/Macar use 1..10).
        n_samples: samples per cell and trial number (at temperature 0 they are identical).
        n_controls: uninjected trials per protocol.
        temperature: 0 = greedy; otherwise seeded Gumbel-max sampling.
        max_new_tokens: reply length limit.
        seed: base seed; each trial's seed is derived from it and the trial's content.
        method: concept-vector method (``mechintro.vectors.METHODS``).
        unit: ``raw`` (add ``s·v``) or ``resid-norm`` (add ``s·resid_norm·v/‖v‖``).
        start: the named prompt position where from-trial / prompt-only injection starts.
        readout: also record Godet's ``b`` and ``b_variants`` at the last prompt token
            (one extra forward per batch, same injection).
        template_kwargs: passed to the chat template (e.g. ``{"enable_thinking": False}``).

    Example::

        spec = SweepSpec(concepts=("Dust",), layers=(20,), strengths=(0.0, 4.0), n_controls=10)
        SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    """

    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    strengths: tuple[float, ...] = (4.0,)
    protocols: tuple[str, ...] = ("detection",)
    modes: tuple[str, ...] = ("from-trial",)
    trial_numbers: tuple[int, ...] = (1,)
    n_samples: int = 1
    n_controls: int = 0
    temperature: float = 0.0
    max_new_tokens: int = 100
    seed: int = 0
    method: str = "lindsey"
    unit: str = "raw"
    start: str = "trial"
    readout: bool = True
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def tup(name: str, cast: Callable[[Any], Any] = lambda x: x) -> tuple[Any, ...]:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise TypeError(f"{name} must be a list, got {value!r}")
            out = tuple(cast(v) for v in value)
            _uniq(out, name)
            object.__setattr__(self, name, out)
            return out

        def count(name: str, lo: int) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
            return value

        for w in tup("concepts"):
            if not isinstance(w, str) or not w.strip():
                raise ValueError(f"concepts must be non-empty words, got {w!r}")
        for layer in tup("layers"):
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(
                    f"layers must be block indices (ints >= 0), got {layer!r}; for a depth "
                    "fraction use mechintro.models.layer_at_depth(model, fraction)"
                )
        for s in tup("strengths", _float):
            if not math.isfinite(s):
                raise ValueError(f"strengths must be finite, got {s}")
        for p in tup("protocols"):
            if not isinstance(p, str) or not p:
                raise ValueError(f"protocols must be names, got {p!r}")
        tup("modes", lambda m: PositionMode.parse(m).value)
        for n in tup("trial_numbers"):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"trial numbers start at 1, got {n!r}")
        count("n_samples", 1)
        count("n_controls", 0)
        count("max_new_tokens", 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        temperature = _float(self.temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        object.__setattr__(self, "temperature", temperature)
        if self.method not in METHODS:
            raise ValueError(f"unknown vector method {self.method!r}: use one of {list(METHODS)}")
        if self.unit not in UNITS:
            raise ValueError(f"unknown strength unit {self.unit!r}: use one of {UNITS}")
        if not isinstance(self.readout, bool):
            raise TypeError(f"readout must be true or false, got {self.readout!r}")
        if not self.protocols:
            raise ValueError("protocols is empty: use ('detection',) at least")
        if not self.trial_numbers:
            raise ValueError("trial_numbers is empty: use (1,) at least")
        injected = bool(self.concepts and self.layers and self.strengths and self.modes)
        if not injected and self.n_controls == 0:
            raise ValueError(
                "the grid is empty: give concepts, layers, strengths and modes, or n_controls > 0"
            )
        kwargs = dict(self.template_kwargs)
        try:
            _canon(kwargs)
        except TypeError as e:
            raise TypeError(f"template_kwargs must be JSON values: {e}") from None
        object.__setattr__(self, "template_kwargs", kwargs)

    def __hash__(self) -> int:
        return hash(self.key)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists, not tuples), in field order."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSpec:
        """The inverse of :meth:`to_dict` (e.g. from a TOML or YAML file); unknown keys refused."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown sweep spec fields {unknown}: valid fields are {names}")
        missing = [n for n in ("concepts", "layers") if n not in data]
        if missing:
            raise ValueError(f"the sweep spec needs {missing}")
        return cls(**dict(data))

    def canonical(self) -> dict[str, Any]:
        """:meth:`to_dict` with every list sorted: what the spec means, whatever its order."""
        return {k: sorted(v) if isinstance(v, list) else v for k, v in self.to_dict().items()}

    @property
    def key(self) -> str:
        """A short hash of :meth:`canonical`: equal for specs that plan the same trials."""
        return _sha(_canon(self.canonical()))

    def __len__(self) -> int:
        cells = (
            len(self.protocols)
            * len(self.concepts)
            * len(self.layers)
            * len(self.strengths)
            * len(self.modes)
            * len(self.trial_numbers)
        )
        return cells * self.n_samples + len(self.protocols) * self.n_controls


def _float(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"expected a number, got {x!r}")
    return float(x)


@dataclass(frozen=True)
class Trial:
    """One trial: what is injected where, the prompt it gets, its seed and its settings.

    A control has strength 0 and ``concept``, ``layer``, ``mode``, ``method``, ``unit`` and
    ``start`` ``None``: its id does not change with the vector settings.
    ``trial_id`` hashes every field (format version included), so it names the trial's
    content, not its place in a plan or a batch.
    """

    protocol: str
    concept: str | None
    layer: int | None
    strength: float
    mode: str | None
    trial_number: int
    sample: int
    seed: int
    temperature: float
    max_new_tokens: int
    method: str | None
    unit: str | None
    start: str | None
    trial_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trial_id", _sha(_canon(self._content())))

    @property
    def control(self) -> bool:
        """An uninjected trial of the grid's control set."""
        return self.concept is None

    @property
    def injected(self) -> bool:
        """Something is added to the residual stream."""
        return self.concept is not None and self.strength != 0.0

    def _content(self) -> dict[str, Any]:
        content = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {"format": STORE_FORMAT, **content}

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, **self._content()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        """A trial from a record; its ``trial_id``, if present, must match its content."""
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        trial = cls(**{n: data[n] for n in names})
        if "trial_id" in data and data["trial_id"] != trial.trial_id:
            raise ValueError(
                f"record {data['trial_id']} does not hash to its content ({trial.trial_id})"
            )
        return trial


def _make_trial(spec: SweepSpec, *, control: bool, **axes: Any) -> Trial:
    """A trial whose seed is derived from ``spec.seed`` and all its other fields.

    A control holds only what its reply depends on: no layer, mode, method, unit or start.
    """
    fields: dict[str, Any] = dict(
        temperature=spec.temperature,
        max_new_tokens=spec.max_new_tokens,
        method=None if control else spec.method,
        unit=None if control else spec.unit,
        start=None if control else spec.start,
        **axes,
    )
    seed = int(_sha(_canon({"base_seed": spec.seed, **fields}), 8), 16) & 0x7FFFFFFF
    return Trial(seed=seed, **fields)


def plan(spec: SweepSpec) -> list[Trial]:
    """Every trial of ``spec``, in a canonical order (injected by layer, then controls).

    The ids, seeds and order depend on the grid's content only, not on the order of the
    values in the spec's lists.
    """
    c = spec.canonical()
    trials: list[Trial] = []
    for layer in c["layers"]:
        for mode in c["modes"]:
            for protocol in c["protocols"]:
                for concept in c["concepts"]:
                    for strength in c["strengths"]:
                        for n in c["trial_numbers"]:
                            for k in range(spec.n_samples):
                                trials.append(
                                    _make_trial(
                                        spec,
                                        protocol=protocol,
                                        concept=concept,
                                        layer=layer,
                                        strength=strength,
                                        mode=mode,
                                        trial_number=n,
                                        sample=k,
                                        control=False,
                                    )
                                )
    numbers = c["trial_numbers"]
    for protocol in c["protocols"]:
        for k in range(spec.n_controls):
            trials.append(
                _make_trial(
                    spec,
                    protocol=protocol,
                    concept=None,
                    layer=None,
                    strength=0.0,
                    mode=None,
                    trial_number=numbers[k % len(numbers)],
                    sample=k // len(numbers),
                    control=True,
                )
            )
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):  # pragma: no cover - would be a bug in the id scheme
        raise RuntimeError("two planned trials share an id")
    return trials


def batches(trials: Sequence[Trial], batch_size: int) -> list[list[Trial]]:
    """Cut ``trials`` into batches of at most ``batch_size``, mixing cells.

    Injected trials keep their order (by layer, then mode: most batches hook one layer);
    controls, which need no hook, are spread evenly among them.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    inj = [t for t in trials if not t.control]
    ctl = [t for t in trials if t.control]
    n, c = len(inj) + len(ctl), len(ctl)
    order: list[Trial] = []
    i = j = 0
    for pos in range(n):  # control j goes to position floor((j + 1/2) n / c)
        if j < c and (i >= len(inj) or pos >= (2 * j + 1) * n // (2 * c)):
            order.append(ctl[j])
            j += 1
        else:
            order.append(inj[i])
            i += 1
    return [order[k : k + batch_size] for k in range(0, n, batch_size)]


# ---------------------------------------------------------------------------------------------
# prompts


def _detection(trial: Trial) -> Prompt:
    return detection.detection_prompt(trial.trial_number)


def _forced(trial: Trial) -> Prompt:
    return detection.detection_prompt(trial.trial_number, forced=True)


_DETECTION_TEXT = _sha(detection.PREAMBLE + "\n" + detection.TRIAL_QUESTION, 8)
PROMPTS: dict[str, PromptBuilder] = {"detection": _detection, "forced": _forced}
PROMPT_VERSIONS: dict[str, str] = {
    "detection": f"detection/1:{_DETECTION_TEXT}",
    "forced": f"forced/1:{_DETECTION_TEXT}:{_sha(detection.FORCED_PREFILL, 8)}",
}


def _prompt_version(name: str, builder: PromptBuilder) -> str:
    if PROMPTS.get(name) is builder:
        return PROMPT_VERSIONS[name]
    version = getattr(builder, "version", None)
    label = getattr(builder, "__qualname__", type(builder).__name__)
    return str(version) if version is not None else f"{name}/{label}"


# ---------------------------------------------------------------------------------------------
# the store


class TrialStore:
    """The append-only ``trials.jsonl`` of one results folder.

    A record is a line ending in ``\\n``; anything after the last ``\\n`` is a torn write
    (the process died mid-append) and is cut off by :meth:`repair`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """Every complete record (a torn tail is ignored, not removed)."""
        return self._parse(self._complete_bytes())

    def _complete_bytes(self) -> bytes:
        if not self.path.exists():
            return b""
        data = self.path.read_bytes()
        return data[: data.rfind(b"\n") + 1]

    def _parse(self, data: bytes) -> list[dict[str, Any]]:
        out = []
        for i, line in enumerate(data.split(b"\n")[:-1]):
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "trial_id" not in rec:
                    raise ValueError("not a trial record")
            except ValueError as e:
                raise ValueError(
                    f"{self.path} line {i + 1} is not a trial record ({e}); the file was edited "
                    "or damaged: delete that line to re-run its trial"
                ) from None
            out.append(rec)
        return out

    def repair(self) -> list[dict[str, Any]]:
        """Cut a torn last line off the file; return the complete records."""
        data = self._complete_bytes()
        size = self.path.stat().st_size if self.path.exists() else 0
        if size > len(data):
            logger.warning(
                "%s: cutting off a torn last line (%d bytes) left by an interrupted write; "
                "its trial will run again",
                self.path,
                size - len(data),
            )
            with open(self.path, "r+b") as f:
                f.truncate(len(data))
                f.flush()
                os.fsync(f.fileno())
        return self._parse(data)

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append ``records`` with one write, then flush and fsync."""
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        new = not self.path.exists()
        with open(self.path, "ab") as f:
            self._write(f, data.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(self.path.parent)

    @staticmethod
    def _write(f: Any, data: bytes) -> None:
        f.write(data)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(folder / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another process is running a sweep into {folder}: wait for it to finish, "
                "or use a new output folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _bind_folder(folder: Path, meta: dict[str, Any], has_trials: bool) -> None:
    """Write ``spec.json``, or check that the folder's spec, model and prompts are these."""
    path = folder / SPEC_FILE
    if not path.exists():
        if has_trials:
            raise ValueError(
                f"{folder} holds {TRIALS_FILE} but no {SPEC_FILE}: it was not written by "
                "run_sweep; use a new output folder (--out)"
            )
        atomic_write_text(path, json.dumps(meta, indent=2, ensure_ascii=False))
        return
    old = json.loads(path.read_text("utf-8"))
    problems = []
    try:
        old_spec = SweepSpec.from_dict(old["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a sweep spec ({e}): use a new output folder") from None
    new_spec = SweepSpec.from_dict(meta["spec"])
    if old_spec.canonical() != new_spec.canonical():
        a, b = old_spec.canonical(), new_spec.canonical()
        problems.append("spec fields " + ", ".join(k for k in a if a[k] != b[k]))
    for what, key in (("model weights", "fingerprint"), ("backend", "backend"), ("dtype", "dtype")):
        if old["model"].get(key) != meta["model"].get(key):
            problems.append(f"{what} ({old['model'].get(key)} → {meta['model'].get(key)})")
    for name, digest in meta["prompts"].items():
        if old["prompts"].get(name, digest) != digest:
            problems.append(f"the {name!r} prompt")
    if not problems:
        return
    if not has_trials:
        logger.info("%s holds no trial yet: replacing its spec", folder)
        atomic_write_text(path, json.dumps(meta, indent=2, ensure_ascii=False))
        return
    raise ValueError(
        f"{folder} holds a sweep that differs from this one in: {'; '.join(problems)}. "
        "Resuming would mix two experiments. Use a new output folder (--out) for this spec, "
        f"or pass the same spec and model to resume (the folder's spec is in {path})."
    )


# ---------------------------------------------------------------------------------------------
# running


Vectors = Mapping[int, Mapping[str, ConceptVector]]


def _vector_info(v: ConceptVector) -> dict[str, Any]:
    return {
        "word": v.word,
        "method": v.method,
        "layer": v.layer,
        "norm": v.norm,
        "norm_ratio": v.norm_ratio,
        "resid_norm": v.resid_norm,
        "fingerprint": v.fingerprint,
        "sha256": hashlib.sha256(v.vector.numpy().tobytes()).hexdigest()[:16],
    }


def _row_vector(v: ConceptVector, unit: str) -> torch.Tensor:
    """The vector a strength multiplies: ``v`` (raw) or ``resid_norm·v/‖v‖`` (resid-norm)."""
    if unit == "raw":
        return v.vector
    if not v.resid_norm or v.norm == 0:
        raise ValueError(
            f"unit='resid-norm' needs a non-zero vector with resid_norm; {v.word!r} has "
            f"norm {v.norm} and resid_norm {v.resid_norm}"
        )
    return v.vector / v.norm * v.resid_norm


def _injections(trials: Sequence[Trial], vectors: Vectors) -> list[Injection]:
    """One per-row Injection per (layer, mode, start) in the batch; other rows get strength 0.

    A strength-0 row is never steered (bit-identical to no hook), so rows of other layers,
    controls and within-cell controls can share the batch.
    """
    groups = sorted({(t.layer, t.mode, t.start) for t in trials if t.injected}, key=str)
    out = []
    for key in groups:
        layer, mode, start = key
        assert layer is not None and mode is not None and start is not None
        mine = [t.injected and (t.layer, t.mode, t.start) == key for t in trials]
        rows = [
            _row_vector(vectors[layer][t.concept], t.unit or "raw") if m and t.concept else None
            for t, m in zip(trials, mine)
        ]
        filler = next(r for r in rows if r is not None)  # multiplied by strength 0
        out.append(
            Injection(
                layer,
                torch.stack([filler if r is None else r for r in rows]),
                [t.strength if m else 0.0 for t, m in zip(trials, mine)],
                mode=mode,
                start=start,
            )
        )
    return out


def _run_batch(
    model: TLModel,
    spec: SweepSpec,
    trials: Sequence[Trial],
    builders: Mapping[str, PromptBuilder],
    vectors: Vectors,
    common: Mapping[str, Any],
) -> list[dict[str, Any]]:
    prompts = [builders[t.protocol](t) for t in trials]
    batch = encode(tokenizer_of(model), prompts, **spec.template_kwargs)
    injections = _injections(trials, vectors)
    inj = injections or None
    t0 = time.perf_counter()
    gen = generate(
        model,
        batch,
        injection=inj,
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        seed=[t.seed for t in trials],
    )
    b: list[float | None] = [None] * len(trials)
    bv: list[float | None] = [None] * len(trials)
    read_s = 0.0
    if spec.readout:
        t1 = time.perf_counter()
        r = readout(model, batch, injection=inj)
        b, bv = r.b.tolist(), r.b_variants.tolist()
        read_s = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ids, pad = batch.input_ids.tolist(), batch.n_pad.tolist()
    starts = batch.positions.get(spec.start)
    records = []
    for i, t in enumerate(trials):
        prompt_ids = ids[i][pad[i] :]
        injection = None
        if t.concept is not None:
            at = None if starts is None or int(starts[i]) < 0 else int(starts[i]) - pad[i]
            injection = {
                "layer": t.layer,
                "strength": t.strength,
                "mode": t.mode,
                "unit": t.unit,
                "start": t.start,
                "start_position": at,
                "vector": common["vectors"][(t.layer, t.concept)],
            }
        records.append(
            {
                **t.to_dict(),
                "injected": t.injected,
                "control": t.control,
                "reply": gen.replies[i],
                "tokens": gen.tokens[i],
                "n_tokens": len(gen.tokens[i]),
                "finished": gen.finished[i],
                "b": b[i],
                "b_variants": bv[i],
                "prompt_text": batch.texts[i],
                "prompt_ids_sha256": hashlib.sha256(_canon(prompt_ids).encode()).hexdigest(),
                "n_prompt_tokens": len(prompt_ids),
                "prompt_version": common["prompt_versions"][t.protocol],
                "injection": injection,
                "batch": {
                    "size": len(trials),
                    "generate_seconds": gen.seconds,
                    "readout_seconds": read_s,
                    "seconds_per_trial": wall / len(trials),
                },
                "written_at": now,
                "spec_key": common["spec_key"],
                "model": common["model"],
                "versions": common["versions"],
            }
        )
    return records


def _resolve_vectors(
    model: TLModel, spec: SweepSpec, pending: Sequence[Trial], given: Vectors | None, out: Path
) -> Vectors:
    need: dict[int, list[str]] = {}
    for t in pending:
        if t.concept is not None and t.layer is not None:
            words = need.setdefault(t.layer, [])
            if t.concept not in words:
                words.append(t.concept)
    if given is not None:
        missing = [(L, w) for L, ws in need.items() for w in ws if w not in given.get(L, {})]
        if missing:
            raise KeyError(
                f"vectors= lacks (layer, concept) {missing[:5]}{'...' if len(missing) > 5 else ''}"
                ": pass {layer: {concept: ConceptVector}} for every layer and concept of the spec"
            )
        for L, ws in need.items():
            for w in ws:
                v = given[L][w]
                if v.layer is not None and v.layer != L:
                    raise ValueError(f"the vector of {w!r} given for layer {L} is from {v.layer}")
        return given
    return {
        L: extract_vectors(
            model, sorted(ws), layer=L, method=spec.method, cache_dir=out / "vectors"
        )
        for L, ws in sorted(need.items())
    }


def _run_meta(
    model: TLModel, spec: SweepSpec, trials: Sequence[Trial], builders: Mapping[str, PromptBuilder]
) -> dict[str, Any]:
    """What ``spec.json`` binds a folder to: spec, model, and a hash of each protocol's prompt.

    Each protocol's first prompt is encoded here, so a prompt that lacks the position where
    the injection starts is refused before anything runs.
    """
    probes = {}
    for name in spec.protocols:
        first = next(t for t in trials if t.protocol == name)
        batch = encode(tokenizer_of(model), [builders[name](first)], **spec.template_kwargs)
        probes[name] = hashlib.sha256(_canon(batch.input_ids[0].tolist()).encode()).hexdigest()
        needs = {"from-trial", "prompt-only", "span"} & set(spec.modes) if spec.concepts else ()
        for mode in sorted(needs):
            where = batch.spans if mode == "span" else batch.positions
            if spec.start not in where or int(where[spec.start].min()) < 0:
                raise ValueError(
                    f"the {name!r} prompt has no {spec.start!r} position, where {mode} "
                    f"injection starts: use a prompt with 'Trial n' (or the marked span), "
                    f"start= another position, or modes such as 'all' or 'generation-only'"
                )
    return {
        "format": STORE_FORMAT,
        "spec": spec.to_dict(),
        "spec_key": spec.key,
        "model": {**model_info(model).to_dict(), "fingerprint": fingerprint(model)},
        "prompts": probes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def run_sweep(
    model: TLModel,
    spec: SweepSpec,
    out_dir: str | os.PathLike[str],
    *,
    vectors: Vectors | None = None,
    prompts: Mapping[str, PromptBuilder] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Any:
    """Run every trial of ``spec`` not yet in ``out_dir``; return all results as a DataFrame.

    Args:
        vectors: ``{layer: {concept: ConceptVector}}``; by default extracted once per layer
            with ``spec.method`` and cached in ``out_dir/vectors``.
        prompts: extra prompt builders ``{name: (Trial) -> Prompt}`` for ``spec.protocols``
            (a builder's ``version`` attribute, if any, is recorded).
        batch_size: trials per generation; it does not change any result, so a run may be
            resumed with another.
        progress: show a tqdm bar over trials (starting at those already done).

    Rerunning the same call after an interruption resumes it: no trial is lost or repeated.

    Example::

        df = run_sweep(model, SweepSpec(concepts=("Dust",), layers=(2,)), "runs/a", batch_size=64)
    """
    from tqdm.auto import tqdm

    builders = {**PROMPTS, **(prompts or {})}
    unknown = [p for p in spec.protocols if p not in builders]
    if unknown:
        raise ValueError(
            f"no prompt builder for protocols {unknown}: use {sorted(builders)} or pass "
            "prompts={name: builder}"
        )
    for layer in spec.layers:
        check_layer(model, layer)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = plan(spec)
    with _locked(out):
        store = TrialStore(out / TRIALS_FILE)
        has_trials = bool(store.read())
        meta = _run_meta(model, spec, trials, builders)
        _bind_folder(out, meta, has_trials)
        done = {r["trial_id"] for r in store.repair()}
        planned = {t.trial_id for t in trials}
        extra = done - planned
        if extra:
            logger.warning("%s holds %d trials that this spec does not plan", out, len(extra))
        pending = [t for t in trials if t.trial_id not in done]
        if done:
            logger.info(
                "resuming %s: %d of %d trials done", out, len(trials) - len(pending), len(trials)
            )
        vecs = _resolve_vectors(model, spec, pending, vectors, out)
        common = {
            "spec_key": spec.key,
            "model": meta["model"],
            "versions": meta["versions"],
            "prompt_versions": {n: _prompt_version(n, builders[n]) for n in spec.protocols},
            "vectors": {(L, w): _vector_info(v) for L, ws in vecs.items() for w, v in ws.items()},
        }
        bar = tqdm(
            total=len(trials),
            initial=len(trials) - len(pending),
            unit="trial",
            desc="sweep",
            disable=not progress,
        )
        try:
            for chunk in batches(pending, batch_size):
                store.append(_run_batch(model, spec, chunk, builders, vecs, common))
                bar.update(len(chunk))
        except KeyboardInterrupt:
            logger.warning(
                "interrupted: %d of %d trials are saved in %s; run the same call again to resume",
                bar.n,
                len(trials),
                out,
            )
            raise
        finally:
            bar.close()
    return load_results(out)


def load_spec(out_dir: str | os.PathLike[str]) -> SweepSpec:
    """The spec a results folder was written for."""
    path = Path(out_dir) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {out_dir} a folder written by run_sweep?")
    return SweepSpec.from_dict(json.loads(path.read_text("utf-8"))["spec"])


def load_results(out_dir: str | os.PathLike[str]) -> Any:
    """The trials of a results folder as a pandas DataFrame, one row per trial, in plan order.

    Nested fields are flattened with dots (``injection.vector.norm``, ``model.fingerprint``).
    Works while a sweep is still running (a torn last line is ignored).
    """
    import pandas as pd

    out = Path(out_dir)
    records = TrialStore(out / TRIALS_FILE).read()
    seen: set[str] = set()
    unique = []
    for r in records:
        if r["trial_id"] not in seen:
            seen.add(r["trial_id"])
            unique.append(r)
    if len(unique) != len(records):
        logger.warning("%s: %d duplicate trial records ignored", out, len(records) - len(unique))
    if (out / SPEC_FILE).exists():
        order = {t.trial_id: i for i, t in enumerate(plan(load_spec(out)))}
        unique.sort(key=lambda r: order.get(r["trial_id"], len(order)))
    if not unique:
        return pd.DataFrame()
    df = pd.json_normalize(unique, sep=".")
    if "injection" in df.columns:  # the null of control rows, next to injection.* columns
        df = df.drop(columns="injection")
    return df
