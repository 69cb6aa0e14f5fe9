"""The grid of a sweep: :class:`SweepSpec`, the :class:`Trial` values it plans, and batches.

:func:`plan` expands a spec into trials, each with a deterministic ``trial_id`` (a hash of
everything that determines its result) and its own sampling seed; :func:`batches` cuts them
into batches that mix cells and spread the uninjected controls evenly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechintro.batching import check_batch_size
from mechintro.choices import METHODS, UNITS, PositionMode
from mechintro.experiments.packs import PromptPack, default_pack, load_pack

STORE_FORMAT = 1


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
    (layer ``None``) cycle through ``trial_numbers`` (and, where the protocol's prompt names
    the concept, through ``concepts`` first: :func:`plan`).

    Args:
        concepts: concept words (vectors by ``method`` at each layer, or given to run_sweep).
        layers: block indices (``mechintro.models.layer_at_depth`` converts depth fractions).
        strengths: injection strengths in ``unit``; 0 = control.
        protocols: prompt builders by name: any of :data:`mechintro.experiments.protocols.PROTOCOLS`
            (``detection``, ``forced``, ``skeptical``, ``detection/raw``, ``transient``,
            ``intention``, ...), or names given to ``run_sweep(prompts=...)``.
        modes: position modes (:class:`~mechintro.inject.PositionMode` values).
        trial_numbers: the ``n`` of ``Trial n`` (Lindsey/Macar use 1..10).
        n_samples: samples per cell and trial number (at temperature 0 they are identical).
        n_controls: uninjected trials per protocol.
        temperature: 0 = greedy; otherwise seeded Gumbel-max sampling.
        max_new_tokens: reply length limit.
        seed: base seed; each trial's seed is derived from it and the trial's content.
        method: concept-vector method (``mechintro.vectors.METHODS``).
        baseline: the baseline words the concept vectors subtract (empty: the method's own
            list, e.g. Macar's 100 words); a model with its own vocabulary (the built-in
            organism) needs words it knows.
        unit: ``raw`` (add ``s·v``) or ``resid-norm`` (add ``s·resid_norm·v/‖v‖``).
        start: the named prompt position where from-trial / prompt-only injection starts.
        readout: also record Godet's ``b`` and ``b_variants`` at the last prompt token
            (one extra forward per batch, same injection).
        template_kwargs: passed to the chat template (e.g. ``{"enable_thinking": False}``).
        prompt_pack: a prompt pack file (:func:`mechintro.experiments.packs.load_pack`) whose
            texts the registered variants use; empty: mechintro's default pack. Read and
            checked when the spec is made; another pack's name, version and hash are part of
            the spec's :attr:`key` (the default's are not: older sweeps keep their keys).

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
    baseline: tuple[str, ...] = ()
    unit: str = "raw"
    start: str = "trial"
    readout: bool = True
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    prompt_pack: str = ""

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
        for w in tup("baseline"):
            if not isinstance(w, str) or not w.strip():
                raise ValueError(f"baseline must list non-empty words, got {w!r}")
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
        if not isinstance(self.prompt_pack, str):
            raise TypeError(f"prompt_pack must be a file path, got {self.prompt_pack!r}")
        pack = load_pack(self.prompt_pack) if self.prompt_pack else default_pack()
        object.__setattr__(self, "_pack", pack)

    @property
    def pack(self) -> PromptPack:
        """The prompt pack the variants' texts come from (read when the spec was made)."""
        pack: PromptPack = self.__dict__["_pack"]
        return pack

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
        # JSON's lists as the tuples the fields declare
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**fields)

    def canonical(self) -> dict[str, Any]:
        """:meth:`to_dict` with every list sorted: what the spec means, whatever its order.

        ``prompt_pack`` is the pack's name, version and hash, not its path, and is left out
        for the default pack."""
        out = {k: sorted(v) if isinstance(v, list) else v for k, v in self.to_dict().items()}
        del out["prompt_pack"]
        if not self.pack.is_default:
            out["prompt_pack"] = {k: v for k, v in self.pack.record().items() if k != "source"}
        return out

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

    A control has strength 0 and ``layer``, ``mode``, ``method``, ``unit`` and ``start``
    ``None``: its id does not change with the vector settings. Its ``concept`` is ``None``
    too, except in a protocol whose prompt names the concept (``uses_concept``), where it is
    the concept whose injected trials it controls (:func:`plan`).
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
        """An uninjected trial of the grid's control set (it has no layer)."""
        return self.layer is None

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


def concept_protocols(names: Sequence[str], pack: PromptPack | None = None) -> frozenset[str]:
    """Those of ``names`` whose registered prompt (with the texts of ``pack``, default the
    default pack) depends on the trial's concept
    (:attr:`~mechintro.experiments.protocols.base.PromptProtocol.uses_concept`)."""
    from mechintro.experiments.protocols.registry import protocols_of

    protocols = protocols_of(pack or default_pack())
    return frozenset(n for n in names if n in protocols and protocols[n].uses_concept)


def plan(spec: SweepSpec) -> list[Trial]:
    """Every trial of ``spec``, in a canonical order (injected by layer, then controls).

    The ids, seeds and order depend on the grid's content only, not on the order of the
    values in the spec's lists. A protocol's ``n_controls`` controls cycle through the
    trial numbers; in a protocol whose prompt names the concept (:func:`concept_protocols`:
    the anti-reward category, the thoughts-in-context system message, the intention
    protocols' prefilled word) they cycle through the concepts first, control ``k`` taking
    concept ``k mod C`` and trial number ``(k div C) mod N``: each control is then the prompt
    of injected trials of its concept and number, with nothing injected.
    """
    c = spec.canonical()
    named = concept_protocols(c["protocols"], spec.pack)
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
        concepts = c["concepts"] if protocol in named and c["concepts"] else [None]
        for k in range(spec.n_controls):
            j = k // len(concepts)
            trials.append(
                _make_trial(
                    spec,
                    protocol=protocol,
                    concept=concepts[k % len(concepts)],
                    layer=None,
                    strength=0.0,
                    mode=None,
                    trial_number=numbers[j % len(numbers)],
                    sample=j // len(numbers),
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
    check_batch_size(batch_size)
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
