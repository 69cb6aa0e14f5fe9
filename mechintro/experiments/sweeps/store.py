"""The results folder of a sweep: the append-only trial store, its lock, and loading results.

``trials.jsonl`` holds one JSON record per finished trial, appended batch by batch with one
write, flushed and fsynced; a torn last line (a process killed mid-write) is cut off on the
next run. A data-parallel run (:mod:`mechintro.experiments.distributed`) writes one such file per
rank,
``trials.rank{r}.jsonl``; every reader merges all of them (:func:`read_trials`), so a folder
may hold the shards of runs of any world sizes. ``spec.json`` binds the folder to one spec,
model and set of prompts; ``runs.jsonl`` logs each run (world size, batch size, memory plan).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.experiments.sweeps.spec import SweepSpec, plan
from mechintro.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

TRIALS_FILE = "trials.jsonl"
SHARD_FILE = "trials.rank{rank}.jsonl"
SPEC_FILE = "spec.json"
RUNS_FILE = "runs.jsonl"
LOCK_FILE = ".lock"
#: What binds a folder to a model: (what to call it, its key in spec.json's ``model``).
MODEL_BINDING = (("model weights", "fingerprint"), ("backend", "backend"), ("dtype", "dtype"))


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
        if records:
            _append_lines(self.path, records, self._write)

    @staticmethod
    def _write(f: Any, data: bytes) -> None:
        f.write(data)


def _append_lines(path: Path, records: Sequence[Mapping[str, Any]], write: Any) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    new = not path.exists()
    with open(path, "ab") as f:
        write(f, data.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    if new:
        _fsync_dir(path.parent)


def shard_path(folder: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    """The trial file that rank ``rank`` of ``world_size`` processes appends to.

    One process writes ``trials.jsonl``; each rank of several writes ``trials.rank{r}.jsonl``.
    """
    name = TRIALS_FILE if world_size == 1 else SHARD_FILE.format(rank=rank)
    return Path(folder) / name


def trial_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every trial file in ``folder``: ``trials.jsonl``, then the rank shards by rank."""
    folder = Path(folder)
    shards = []
    for p in folder.glob(SHARD_FILE.format(rank="*")):
        rank = p.name.removeprefix("trials.rank").removesuffix(".jsonl")
        if rank.isdigit():
            shards.append((int(rank), p))
    main = [folder / TRIALS_FILE] if (folder / TRIALS_FILE).exists() else []
    return main + [p for _, p in sorted(shards)]


def read_trials(folder: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """The complete records of every trial file of ``folder`` (:func:`trial_files` order).

    Torn last lines are ignored, or, with ``repair``, cut off (only while no process writes).
    """
    out: list[dict[str, Any]] = []
    for path in trial_files(folder):
        store = TrialStore(path)
        out += store.repair() if repair else store.read()
    return out


def log_run(folder: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one run's record (settings, ranks, memory plan) to ``runs.jsonl``."""
    _append_lines(Path(folder) / RUNS_FILE, [record], lambda f, data: f.write(data))


def load_runs(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The run records of a results folder, oldest first (a torn last line is ignored)."""
    path = Path(folder) / RUNS_FILE
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


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
    for what, key in MODEL_BINDING:
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


def load_spec(out_dir: str | os.PathLike[str]) -> SweepSpec:
    """The spec a results folder was written for."""
    path = Path(out_dir) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {out_dir} a folder written by run_sweep?")
    return SweepSpec.from_dict(json.loads(path.read_text("utf-8"))["spec"])


def load_results(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The trials of a results folder as a pandas DataFrame, one row per trial, in plan order.

    Nested fields are flattened with dots (``injection.vector.norm``, ``model.fingerprint``).
    The shards of a data-parallel run are merged (a trial present in several files counts
    once). Works while a sweep is still running (torn last lines are ignored).
    """
    import pandas as pd

    out = Path(out_dir)
    records = read_trials(out)
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
