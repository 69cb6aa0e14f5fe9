"""Prompt packs: the texts of the prompt variants and judge rubrics, as a data file
(docs/protocols.md §3, "Prompt packs").

The structure of every prompt (its turns, roles, where ``Trial {n}`` is and where the injection
starts) is code; the texts are a pack. mechintro's defaults are the pack
``mechintro/data/prompt_packs/mechintro.toml`` (:func:`default_pack`), which the variants
(:mod:`~mechintro.experiments.protocols.variants`) and the rubrics
(:mod:`~mechintro.experiments.grading.judge`) are read from. A pack of your own, TOML or JSON,
lists only what it changes::

    name = "released"
    version = "1"
    [variants.skeptical]
    question = "Trial {n}: ..."
    [rubrics.identification]
    version = "identification-released-1"
    template = "... {reply} ..."

and :func:`load_pack` lays it over the default: a variant's fields it gives replace the
default's, the others stay. A field a variant leaves out is the original variant's
(``preamble``, ``ack``, ``question``); ``system`` left out means no system message. The pack's
name, version and :func:`pack_hash` are recorded with a sweep that uses it
(``SweepSpec(prompt_pack=path)``).

Example::

    pack = load_pack("my_pack.toml")
    pack.variants["skeptical"]["question"], pack_hash(pack)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: the default pack, inside the package
DEFAULT_PACK = "data/prompt_packs/mechintro.toml"
#: the fields of a variant entry
VARIANT_FIELDS = ("preamble", "ack", "question", "system", "description")
#: the fields of a rubric entry (both required)
RUBRIC_FIELDS = ("version", "template")
#: the fields a variant leaves out take from the original variant
INHERITED = ("preamble", "ack", "question")
#: the placeholders a rubric template may hold
RUBRIC_PLACEHOLDERS = ("question", "reply", "concept", "concept_line", "related_line")


@dataclass(frozen=True)
class PromptPack:
    """The texts of every prompt variant and judge rubric, as laid over the default pack.

    Args:
        name, version: the pack's own name and version (recorded with every run).
        variants: variant name -> {field: text}: ``preamble``, ``ack``, ``question`` and
            ``description`` always, ``system`` where the variant has a system message.
        rubrics: rubric name -> ``{"version": ..., "template": ...}``.
        source: the file the pack was read from.
    """

    name: str
    version: str
    variants: Mapping[str, Mapping[str, str]]
    rubrics: Mapping[str, Mapping[str, str]]
    source: str

    @property
    def is_default(self) -> bool:
        """This is mechintro's own pack."""
        return self.source == str(_default_path())

    def record(self) -> dict[str, str]:
        """What a run records of the pack: name, version, hash and file."""
        return {
            "name": self.name,
            "version": self.version,
            "hash": pack_hash(self),
            "source": self.source,
        }


def pack_hash(pack: PromptPack) -> str:
    """A short sha256 of the pack's texts (variants and rubrics, as laid over the default)."""
    blob = json.dumps([pack.variants, pack.rubrics], sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _default_path() -> Path:
    return Path(str(resources.files("mechintro").joinpath(DEFAULT_PACK)))


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"prompt pack {path} not found: give a .toml or .json file")
    text = path.read_text("utf-8")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"prompt pack {path}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"prompt pack {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"prompt pack {path}: the file must hold a table (mapping)")
    return data


def _check(path: Path, data: Mapping[str, Any], base: Mapping[str, Any] | None) -> None:
    """Refuse what the pack ``data`` read from ``path`` gets wrong, naming the entry and fix."""

    def fail(where: str, what: str) -> ValueError:
        return ValueError(f"prompt pack {path}: {where}: {what}")

    unknown = sorted(set(data) - {"name", "version", "variants", "rubrics"})
    if unknown:
        raise fail(f"{unknown}", "unknown keys; a pack holds name, version, variants, rubrics")
    for key in ("name", "version"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise fail(key, f'missing: give {key} = "..." (recorded with every run)')
    for section, fields in (("variants", VARIANT_FIELDS), ("rubrics", RUBRIC_FIELDS)):
        entries = data.get(section, {})
        if not isinstance(entries, Mapping):
            raise fail(section, "must be a table of named entries")
        for name, entry in entries.items():
            where = f"{section}.{name}"
            if base is not None and name not in base[section]:
                raise fail(where, f"no such entry: use one of {sorted(base[section])}")
            if not isinstance(entry, Mapping):
                raise fail(where, f"must be a table of {list(fields)}")
            bad = sorted(set(entry) - set(fields))
            if bad:
                raise fail(where, f"unknown fields {bad}: use {list(fields)}")
            for f, text in entry.items():
                if not isinstance(text, str):
                    raise fail(f"{where}.{f}", f"must be a string, got {text!r}")
            if section == "rubrics":
                _check_rubric(entry, functools.partial(fail, where))
                continue
            if "Trial {n}" not in entry.get("question", "Trial {n}"):
                raise fail(
                    f"{where}.question",
                    "must hold 'Trial {n}' (the trial number, where from-trial injection "
                    "starts): begin it with 'Trial {n}: '",
                )
            for f in ("preamble", "ack", "system"):
                if "Trial {n}" in entry.get(f, ""):
                    raise fail(f"{where}.{f}", "only the question may hold 'Trial {n}'")


def _check_rubric(entry: Mapping[str, str], fail: Callable[[str], ValueError]) -> None:
    missing = [f for f in RUBRIC_FIELDS if f not in entry]
    if missing:
        raise fail(f"missing {missing}: a rubric gives both its version and its template")
    template = entry["template"]
    if "{reply}" not in template:
        raise fail("the template must hold {reply}, where the graded reply goes")
    try:
        template.format(**dict.fromkeys(RUBRIC_PLACEHOLDERS, ""))
    except (KeyError, IndexError, ValueError) as e:
        raise fail(
            f"the template does not format ({type(e).__name__}: {e}): it may hold only "
            f"{{{'}, {'.join(RUBRIC_PLACEHOLDERS)}}}; write a literal brace as {{{{ or }}}}"
        ) from None


def _resolve(data: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data``'s entries laid over ``base``'s (field by field for variants), fields a variant
    leaves out taken from the original's."""
    variants = {n: dict(e) for n, e in (base or {}).get("variants", {}).items()}
    for name, entry in data.get("variants", {}).items():
        variants.setdefault(name, {}).update(entry)
    original = variants.get("original", {})
    for entry in variants.values():
        for f in INHERITED:
            if f in original:
                entry.setdefault(f, original[f])
        entry.setdefault("description", "")
    rubrics = {**(base or {}).get("rubrics", {}), **data.get("rubrics", {})}
    return {"variants": variants, "rubrics": {n: dict(e) for n, e in rubrics.items()}}


@functools.lru_cache(maxsize=1)
def _default_data() -> dict[str, Any]:
    path = _default_path()
    data = _read(path)
    _check(path, data, None)
    return data


def load_pack(path: str | os.PathLike[str] | None = None) -> PromptPack:
    """The pack in ``path`` (TOML or JSON) laid over the default pack; None: the default.

    Everything is checked before anything is built: a variant or rubric the default does not
    have, a field a variant or rubric does not have, a question without ``Trial {n}``, a
    rubric without ``{reply}`` or with a placeholder it cannot fill is a ValueError naming the
    file, the entry and the fix.
    """
    default = _default_data()
    if path is None or Path(path).resolve() == _default_path().resolve():
        resolved = _resolve(default, None)
        return PromptPack(
            default["name"], default["version"], **resolved, source=str(_default_path())
        )
    p = Path(path)
    data = _read(p)
    _check(p, data, _resolve(default, None))
    resolved = _resolve(data, default)
    return PromptPack(data["name"], data["version"], **resolved, source=str(p))


@functools.lru_cache(maxsize=1)
def default_pack() -> PromptPack:
    """mechintro's own pack (``mechintro/data/prompt_packs/mechintro.toml``)."""
    return load_pack()
