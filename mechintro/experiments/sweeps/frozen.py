"""The frozen injections of a results folder: what every trial's injection is computed from.

An injected trial adds ``strength × row`` to the residual stream, where ``row`` is its
concept's vector at its layer (``unit="raw"``) or that vector rescaled to the layer's mean
residual norm (``unit="resid-norm"``: ``resid_norm·v/‖v‖``). That ``resid_norm`` is a mean
over the prompts of one extraction, so it depends on which concepts were extracted together:
a resumed run that extracted only its pending concepts would steer the rest of the sweep with
other rows than its first part, and record other norms.

So the first run of a sweep resolves the vector of every (layer, concept) of the spec, the
``vectors=`` given or all concepts of a layer extracted in one call, and freezes them in the
folder before any trial runs (:func:`freeze`)::

    frozen.safetensors   vector/{i}: the i-th concept vector (fp32)
                         row/{i}: what a strength of 1 adds with it
    frozen.json          the spec key, the unit, the model (fingerprint, backend, dtype), the
                         sha256 of frozen.safetensors, and per entry i its layer, concept,
                         the vector's provenance, and the record each trial carries of it
                         (injection.vector)

Every run, the first included, injects what :func:`load_frozen` reads back, after
:meth:`Frozen.check` found it frozen for this spec and model; a resumed run never extracts.
The tensors are written first and the JSON last, each atomically (a temp file, then
``os.replace``): a run stopped in between leaves no ``frozen.json``, and the next one freezes
again. No pickle: tensors as safetensors, the rest as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import Tensor

from mechintro.experiments.sweeps.spec import SweepSpec
from mechintro.experiments.sweeps.store import MODEL_BINDING
from mechintro.inject import unit_rows
from mechintro.io import atomic_write, atomic_write_text
from mechintro.vectors import ConceptVector

FROZEN_TENSORS = "frozen.safetensors"
FROZEN_FILE = "frozen.json"
FROZEN_FORMAT = 1

Key = tuple[int, str]  # (layer, concept)
Vectors = Mapping[int, Mapping[str, ConceptVector]]  # {layer: {concept: vector}}


def _start_over(folder: Path) -> str:
    return f"use a new output folder (--out), or delete {folder} to run the sweep from the start"


def vector_record(v: ConceptVector) -> dict[str, Any]:
    """What a trial record says of its concept vector (``injection.vector``)."""
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


def row_vector(v: ConceptVector, unit: str) -> Tensor:
    """What a strength of 1 adds for ``v`` (:func:`mechintro.inject.unit_rows`)."""
    try:
        return unit_rows(v.vector, unit, v.resid_norm)
    except ValueError as e:
        raise ValueError(f"the vector of {v.word!r} (norm {v.norm}): {e}") from None


def select(vectors: Vectors, keys: Iterable[Key]) -> dict[Key, ConceptVector]:
    """The vector of every (layer, concept) of ``keys`` in ``{layer: {concept: vector}}``."""
    keys = list(keys)
    missing = [(L, w) for L, w in keys if w not in vectors.get(L, {})]
    if missing:
        raise KeyError(
            f"vectors= lacks (layer, concept) {missing[:5]}{'...' if len(missing) > 5 else ''}"
            ": pass {layer: {concept: ConceptVector}} for every layer and concept of the spec"
        )
    for L, w in keys:
        v = vectors[L][w]
        if v.layer is not None and v.layer != L:
            raise ValueError(f"the vector of {w!r} given for layer {L} is from {v.layer}")
    return {(L, w): vectors[L][w] for L, w in keys}


@dataclass(frozen=True)
class Frozen:
    """The injection inputs of every (layer, concept) of a sweep, as frozen in ``folder``.

    For each key ``k = (layer, concept)``: ``vectors[k]`` is the concept vector,
    ``rows[k]`` what a strength of 1 adds (in the spec's unit), and ``records[k]`` what each
    of its trials records as ``injection.vector``; ``meta`` is ``frozen.json``.
    """

    folder: Path
    meta: dict[str, Any]
    vectors: dict[Key, ConceptVector]
    rows: dict[Key, Tensor]
    records: dict[Key, dict[str, Any]]

    def check(self, spec: SweepSpec, model: Mapping[str, Any]) -> None:
        """Refuse injections frozen for another spec or model (``model``: spec.json's)."""
        problems = []
        if self.meta["format"] != FROZEN_FORMAT:
            problems.append(f"format ({self.meta['format']} → {FROZEN_FORMAT})")
        if self.meta["spec_key"] != spec.key:
            problems.append(f"spec (key {self.meta['spec_key']} → {spec.key})")
        for what, key in MODEL_BINDING:
            old, new = self.meta["model"].get(key), model.get(key)
            if old != new:
                problems.append(f"{what} ({old} → {new})")
        if problems:
            raise ValueError(
                f"{self.folder / FROZEN_FILE} holds the injections of another {'; '.join(problems)}"
                ": the rest of the sweep would be steered unlike its first part: "
                + _start_over(self.folder)
            )

    def check_given(self, vectors: Vectors) -> None:
        """Refuse ``vectors=`` other than those frozen on the sweep's first run."""
        given = select(vectors, self.records)
        differ = [k for k, r in self.records.items() if vector_record(given[k]) != r]
        if differ:
            raise ValueError(
                f"vectors= differs, at (layer, concept) {differ[:5]}, from the vectors frozen "
                f"in {self.folder / FROZEN_FILE} on this sweep's first run: pass those, or "
                "omit vectors= to use them; for other vectors, " + _start_over(self.folder)
            )

    def check_written(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Refuse a folder whose trials were injected with other vectors than the frozen ones.

        Trials written before injections were frozen (an older mechintro re-extracted the
        pending concepts' vectors on resume) pass if their vectors are the frozen ones.
        """
        bad = [
            (r, self.records[k])
            for r in records
            if r.get("injection") is not None
            and (k := (r["layer"], r["concept"])) in self.records
            and r["injection"]["vector"] != self.records[k]
        ]
        if bad:
            r, want = bad[0]
            got = r["injection"]["vector"]
            field = next(f for f in want if got.get(f) != want[f])
            raise ValueError(
                f"trials in {self.folder} ({len(bad)} of them) were injected with other vectors "
                f"than those frozen in {FROZEN_FILE} (first: {r['concept']!r} at layer "
                f"{r['layer']}, {field} {got.get(field)} instead of {want[field]}): a run that "
                "extracted them again wrote them, and resuming would mix two sets of vectors: "
                + _start_over(self.folder)
            )


def freeze(
    folder: str | os.PathLike[str],
    spec: SweepSpec,
    model: Mapping[str, Any],
    vectors: Mapping[Key, ConceptVector],
) -> Frozen:
    """Freeze ``vectors`` and their rows in ``spec.unit`` into ``folder``; return them as read.

    ``model`` is spec.json's model (name, backend, dtype, fingerprint). What is returned is
    read back from the files, so the first run injects exactly what a resumed one will.
    """
    from safetensors.torch import save

    folder = Path(folder)
    keys = sorted(vectors)
    tensors, entries = {}, []
    for i, k in enumerate(keys):
        v = vectors[k]
        tensors[f"vector/{i}"] = v.vector.clone()  # raw rows are the vectors: no shared memory
        tensors[f"row/{i}"] = row_vector(v, spec.unit).clone()
        entries.append(
            {
                "layer": k[0],
                "concept": k[1],
                "record": vector_record(v),
                "provenance": v.provenance(),
            }
        )
    data = save(tensors)
    meta = {
        "format": FROZEN_FORMAT,
        "spec_key": spec.key,
        "unit": spec.unit,
        "model": dict(model),
        "tensors_sha256": hashlib.sha256(data).hexdigest(),
        "entries": entries,
    }
    atomic_write(folder / FROZEN_TENSORS, lambda p: Path(p).write_bytes(data))
    atomic_write_text(folder / FROZEN_FILE, json.dumps(meta, indent=2, ensure_ascii=False))
    return load_frozen(folder)


def load_frozen(folder: str | os.PathLike[str]) -> Frozen:
    """The injections frozen in ``folder`` (the tensors checked against their sha256).

    Example::

        frozen = load_frozen("runs/a")
        frozen.vectors[(20, "Dust")].resid_norm, frozen.rows[(20, "Dust")].norm()
    """
    from safetensors.torch import load

    folder = Path(folder)
    meta = json.loads((folder / FROZEN_FILE).read_text("utf-8"))
    path = folder / FROZEN_TENSORS
    data = path.read_bytes() if path.exists() else b""
    if hashlib.sha256(data).hexdigest() != meta["tensors_sha256"]:
        raise ValueError(
            f"{path} is missing or is not the file {FROZEN_FILE} was written with: "
            + _start_over(folder)
        )
    tensors = load(data)
    init = {f.name for f in fields(ConceptVector) if f.init} - {"vector"}
    vectors, rows, records = {}, {}, {}
    for i, e in enumerate(meta["entries"]):
        k = (e["layer"], e["concept"])
        # JSON holds as lists the tuples ConceptVector declares (baseline, problems)
        origin: dict[str, Any] = {
            n: tuple(x) if isinstance(x, list) else x
            for n, x in e["provenance"].items()
            if n in init
        }
        vectors[k] = ConceptVector(vector=tensors[f"vector/{i}"], **origin)
        rows[k] = tensors[f"row/{i}"]
        records[k] = e["record"]
    return Frozen(folder, meta, vectors, rows, records)
