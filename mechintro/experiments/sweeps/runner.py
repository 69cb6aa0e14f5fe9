"""Running a sweep: batches of mixed cells through per-row injections, records, resuming.

:func:`run_sweep` is the entry point; see :mod:`mechintro.experiments.sweeps` for the design.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch

from mechintro.batching import check_batch_size
from mechintro.experiments import distributed
from mechintro.experiments.distributed import Ranks
from mechintro.experiments.protocols.registry import protocols_of
from mechintro.experiments.sweeps.builders import (
    PROMPTS,
    PromptBuilder,
    ProtocolBuilder,
    build_prompt,
    prompt_version,
    without_chat_template,
)
from mechintro.experiments.sweeps.frozen import (
    FROZEN_FILE,
    Frozen,
    Key,
    Vectors,
    freeze,
    load_frozen,
    select,
)
from mechintro.experiments.sweeps.spec import STORE_FORMAT, SweepSpec, Trial, _canon, batches, plan
from mechintro.experiments.sweeps.store import (
    SPEC_FILE,
    TrialStore,
    _bind_folder,
    _locked,
    load_results,
    load_runs,
    log_run,
    read_trials,
    shard_path,
)
from mechintro.generation import (
    generate,
    generation_path,
    readout,
    release_captures,
    shared_prefix,
)
from mechintro.inject import Injection, steered_from
from mechintro.memory import (
    ModelShape,
    device_memory,
    estimate,
    model_devices,
    no_fit_message,
    plan_batch,
)
from mechintro.models import TLModel, check_layer, d_model, fingerprint, model_info, tokenizer_of
from mechintro.progress import progress_bar
from mechintro.prompts import EncodedPrompt, encode
from mechintro.record import library_versions
from mechintro.vectors import ConceptVector, extract_vectors

logger = logging.getLogger(__name__)

R = TypeVar("R")


def _injections(trials: Sequence[Trial], rows: Mapping[Key, torch.Tensor]) -> list[Injection]:
    """One per-row Injection per (layer, mode, start) in the batch; other rows get strength 0.

    ``rows[(layer, concept)]`` is what a strength of 1 adds (:attr:`Frozen.rows`). A
    strength-0 row is never steered (bit-identical to no hook), so rows of other layers,
    controls and within-cell controls can share the batch.
    """
    groups = sorted({(t.layer, t.mode, t.start) for t in trials if t.injected}, key=str)
    out = []
    for key in groups:
        layer, mode, start = key
        assert layer is not None and mode is not None and start is not None
        mine = [t.injected and (t.layer, t.mode, t.start) == key for t in trials]
        out.append(
            Injection.per_row(
                layer,
                [
                    rows[(layer, t.concept)] if m and t.concept is not None else None
                    for t, m in zip(trials, mine)
                ],
                [t.strength for t in trials],
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
    frozen: Frozen,
    common: Mapping[str, Any],
    fast: bool | None,
    known: dict[tuple[str, str], EncodedPrompt],
) -> list[dict[str, Any]]:
    """Run one batch; return its records. ``known``: the prompts tokenised by earlier batches
    of the sweep (:func:`~mechintro.prompts.encode`), filled in with this one's."""
    tok = tokenizer_of(model)
    prompts = [build_prompt(builders[t.protocol], t, tok) for t in trials]
    batch = encode(tok, prompts, known=known, **spec.template_kwargs)
    injections = _injections(trials, frozen.rows)
    inj = injections or None
    t0 = time.perf_counter()
    gen = generate(
        model,
        batch,
        injection=inj,
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        seed=[t.seed for t in trials],
        fast=fast,
    )
    b: list[float | None] = [None] * len(trials)
    bv: list[float | None] = [None] * len(trials)
    read_s = 0.0
    if spec.readout:
        t1 = time.perf_counter()
        r = readout(model, batch, injection=inj, fast=fast)
        b, bv = r.b.tolist(), r.b_variants.tolist()
        read_s = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ids, pad = batch.input_ids.tolist(), batch.n_pad.tolist()
    starts = batch.positions[spec.start].tolist() if spec.start in batch.positions else None
    digests: dict[tuple[int, ...], str] = {}  # a batch repeats a few prompts: hash each once
    records = []
    for i, t in enumerate(trials):
        prompt_ids = ids[i][pad[i] :]
        key = tuple(prompt_ids)
        if key not in digests:
            digests[key] = hashlib.sha256(_canon(prompt_ids).encode()).hexdigest()
        injection = None
        if t.layer is not None and t.concept is not None:  # not a control
            at = None if starts is None or starts[i] < 0 else starts[i] - pad[i]
            injection = {
                "layer": t.layer,
                "strength": t.strength,
                "mode": t.mode,
                "unit": t.unit,
                "start": t.start,
                "start_position": at,
                "vector": frozen.records[(t.layer, t.concept)],
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
                "prompt_ids_sha256": digests[key],
                "n_prompt_tokens": len(prompt_ids),
                "prompt_version": common["prompt_versions"][t.protocol],
                "injection": injection,
                "generation_path": gen.record.settings["path"],
                # the twin's attention and norms (use_attention, use_norms); None off the twin
                "attention": gen.record.settings["attention"],
                "norms": gen.record.settings["norms"],
                "batch": {
                    "size": len(trials),
                    "generate_seconds": gen.seconds,
                    "readout_seconds": read_s,
                    "seconds_per_trial": wall / len(trials),
                    **common["ranks"],
                },
                "written_at": now,
                "spec_key": common["spec_key"],
                "model": common["model"],
                "versions": common["versions"],
            }
        )
    return records


def _resolve_vectors(
    model: TLModel, spec: SweepSpec, keys: Sequence[Key], given: Vectors | None
) -> dict[Key, ConceptVector]:
    """The vector of every (layer, concept) of ``keys``: given, or extracted with
    ``spec.method`` for all concepts of a layer in one call (they share its ``resid_norm``)."""
    if given is not None:
        return select(given, keys)
    out: dict[Key, ConceptVector] = {}
    for layer in sorted({at for at, _ in keys}):
        words = sorted(w for at, w in keys if at == layer)
        baseline = list(spec.baseline) or None
        vecs = extract_vectors(model, words, layer=layer, method=spec.method, baseline=baseline)
        out.update({(layer, w): v for w, v in vecs.items()})
    return out


def _run_meta(
    model: TLModel, spec: SweepSpec, trials: Sequence[Trial], builders: Mapping[str, PromptBuilder]
) -> dict[str, Any]:
    """What ``spec.json`` binds a folder to: spec, model, and a hash of each protocol's prompt.

    Each protocol's first prompt is encoded here, so a prompt that lacks the position where
    the injection starts is refused before anything runs.
    """
    probes = {}
    tok = tokenizer_of(model)
    for name in spec.protocols:
        first = next(t for t in trials if t.protocol == name)
        batch = encode(tok, [build_prompt(builders[name], first, tok)], **spec.template_kwargs)
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
        "prompt_pack": {**spec.pack.record(), "default": spec.pack.is_default},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def _prompt_tokens(
    model: TLModel, spec: SweepSpec, trials: Sequence[Trial], builders: Mapping[str, PromptBuilder]
) -> tuple[int, int]:
    """The longest prompt of ``trials``, in tokens (each distinct prompt encoded once), and
    how many leading tokens all of them share before the first position the spec's modes
    steer: generation runs those once, for one row (:func:`shared_prefix`); 0 when the
    prompts differ in length, or where the steered positions cannot be read."""
    tok = tokenizer_of(model)
    seen: dict[tuple[str, int, str | None], Trial] = {}
    for t in trials:
        seen.setdefault((t.protocol, t.trial_number, t.concept), t)
    prompts = [build_prompt(builders[t.protocol], t, tok) for t in seen.values()]
    batch = encode(tok, prompts, **spec.template_kwargs)
    start = batch.length
    if any(t.injected for t in trials):
        probe = torch.ones(d_model(model))
        try:
            injs = [Injection(0, probe, 1.0, mode=m, start=spec.start) for m in spec.modes]
            start = steered_from(injs, batch)
        except (KeyError, ValueError):  # a prompt without the start position: plan it all
            start = 0
    return batch.length, shared_prefix(batch, start)


def _memory_plan(
    model: TLModel,
    spec: SweepSpec,
    trials: Sequence[Trial],
    builders: Mapping[str, PromptBuilder],
    batch_size: int | str,
    max_batch: int,
) -> tuple[int, dict[str, Any]]:
    """(batch size, its memory plan) for this process's model and device.

    ``batch_size="auto"``: the largest batch (at most ``max_batch``) that the memory plan
    fits on the device; an int is kept, with a warning if the plan says it will not fit.
    """
    if batch_size == "auto":
        release_captures()  # a decode step or patching forward kept from earlier calls holds memory
    devices = model_devices(model)
    free = [device_memory(d) for d in devices]
    memory = None if None in free else min(f for f in free if f is not None)
    length, shared = _prompt_tokens(model, spec, trials, builders)
    kw: dict[str, Any] = dict(
        prompt_tokens=length,
        shared_tokens=shared,
        new_tokens=spec.max_new_tokens,
        dtype=next(model.parameters()).dtype,
        n_devices=len(devices),
        weights_resident=True,
    )
    shape = ModelShape.from_model(model)
    if batch_size == "auto":
        if memory is None:
            raise ValueError(
                f"batch_size='auto' needs the free memory of {devices[0]}, which is unknown: "
                "give batch_size=N"
            )
        plan = plan_batch(shape, memory=memory, max_batch=max_batch, **kw)
    else:
        assert isinstance(batch_size, int)
        plan = estimate(shape, batch_size=batch_size, memory=memory, **kw)
        if plan.fits is False:
            logger.warning("%s", no_fit_message(plan))
    return plan.batch_size, {
        **plan.to_dict(),
        "requested": batch_size,
        "devices": [str(d) for d in devices],
    }


def _on_main(ranks: Ranks, fn: Callable[[], R]) -> R | None:
    """Run ``fn`` on rank 0 while the others wait; an error there stops every rank.

    Returns ``fn()`` on rank 0 and ``None`` on the others.
    """
    result, status = None, ("ok", "")
    if ranks.is_main:
        try:
            result = fn()
        except BaseException as e:
            ranks.broadcast(("error", f"{type(e).__name__}: {e}"))
            raise
    status = ranks.broadcast(status)
    if status[0] == "error":
        raise RuntimeError(f"rank 0 stopped the sweep: {status[1]}")
    return result


def run_sweep(
    model: TLModel,
    spec: SweepSpec,
    out_dir: str | os.PathLike[str],
    *,
    vectors: Vectors | None = None,
    prompts: Mapping[str, PromptBuilder] | None = None,
    batch_size: int | str = 32,
    max_batch: int = 512,
    progress: bool = True,
    ranks: Ranks | None = None,
    fast: bool | None = None,
) -> Any:
    """Run every trial of ``spec`` not yet in ``out_dir``; return all results as a DataFrame.

    Args:
        fast: as :func:`~mechintro.generation.generate`'s: ``False`` runs a bridge itself,
            not its plain HF twin (the same numbers; the run record names the path).
        vectors: ``{layer: {concept: ConceptVector}}`` for every layer and concept of the
            spec; by default extracted with ``spec.method``, all concepts of a layer in one
            call. Either way they are frozen in ``out_dir`` on the first run
            (:mod:`~mechintro.experiments.sweeps.frozen`), and every later run injects the frozen
            ones: given again, they must be the same.
        prompts: extra prompt builders ``{name: (Trial) -> Prompt}`` for ``spec.protocols``
            (a builder's ``version`` attribute, if any, is recorded).
        batch_size: trials per generation. The batches are cut from the whole plan, so a
            run resumed with the batch size of the first runs that run's batches, and every
            record comes out bit for bit; another size may change the readouts in the last
            bits (a row's floating-point sums depend on its batch's shapes), and a reply
            only where two tokens nearly tie.
            ``"auto"``: the largest batch, up to ``max_batch``, that the memory plan
            (:mod:`mechintro.memory`) fits on the model's device(s) for the whole plan.
        progress: show a tqdm bar over trials (starting at those already done).
        ranks: the process's place in a data-parallel job (default:
            :func:`mechintro.experiments.distributed.current`, a world of one outside ``torchrun``).

    Rerunning the same call after an interruption resumes it: no trial is lost or repeated,
    and the records equal an uninterrupted run's in every field but ``written_at`` and the
    timings under ``batch``. In a job of several ranks, each runs the same call on its own
    copy of the model: rank 0 locks and checks the folder, repairs torn shard files, freezes
    or checks the injections and lists the pending trials; every rank then takes every
    ``world_size``-th batch of them and appends its records to its own
    ``trials.rank{r}.jsonl``. Each trial keeps its id and seed, so the merged results equal a
    single process's run trial for trial. ``runs.jsonl`` records every run: ranks, devices,
    the batch size and its memory plan, the generation path and the library versions.

    Example::

        df = run_sweep(model, SweepSpec(concepts=("Dust",), layers=(2,)), "runs/a", batch_size=64)
    """
    spec, note = without_chat_template(spec, tokenizer_of(model))
    if note:
        logger.warning("%s: %s", model_info(model).name, note)
    builders = {**pack_prompts(spec), **(prompts or {})}
    unknown = [p for p in spec.protocols if p not in builders]
    if unknown:
        raise ValueError(
            f"no prompt builder for protocols {unknown}: use {sorted(builders)} or pass "
            "prompts={name: builder}"
        )
    for layer in spec.layers:
        check_layer(model, layer)
    check_batch_size(batch_size, auto=True)
    ranks = ranks or distributed.current()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = plan(spec)
    with _locked(out) if ranks.is_main else contextlib.nullcontext():
        found = _on_main(
            ranks, lambda: _open_folder(model, spec, trials, builders, vectors, out, note)
        )
        shared = ranks.broadcast(None if found is None else found[:2])
        meta, done = typing.cast(tuple[dict[str, Any], set[str]], shared)
        # rank 0 froze the injections (or checked them); the others read them back
        frozen = found[2] if found else load_frozen(out)
        pending = [t for t in trials if t.trial_id not in done]
        if ranks.is_main and done:
            logger.info(
                "resuming %s: %d of %d trials done", out, len(trials) - len(pending), len(trials)
            )
        size, memory = (1 if batch_size == "auto" else int(batch_size)), None
        if pending:
            cap = min(max_batch, -(-len(trials) // ranks.world_size))
            size, memory = _memory_plan(model, spec, trials, builders, batch_size, cap)
        here: dict[str, Any] = {
            "rank": ranks.rank,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        everyone = ranks.all_gather({**here, "batch_size": size, "memory": memory})
        size = min(r["batch_size"] for r in everyone)  # one batching for every rank
        # the whole plan's batches, less the trials done: a resumed run's batches are those
        # an uninterrupted one would have run (at the same size)
        todo = [[t for t in chunk if t.trial_id not in done] for chunk in batches(trials, size)]
        mine = ranks.share([chunk for chunk in todo if chunk])
        if ranks.is_main:
            if done:
                _warn_if_batching_changed(out, size)
            path = generation_path(model, fast)
            record = _run_record(ranks, size, batch_size, len(trials), len(pending), everyone, path)
            record["notes"] = [note] if note else []
            record["prompt_pack"] = spec.pack.record()
            log_run(out, record)
        common = {
            "spec_key": spec.key,
            "model": meta["model"],
            "versions": meta["versions"],
            "prompt_versions": {n: prompt_version(n, builders[n]) for n in spec.protocols},
            "ranks": {"rank": ranks.rank, "world_size": ranks.world_size},
        }
        alone = ranks.world_size == 1
        bar = progress_bar(
            total=len(trials) if alone else sum(map(len, mine)),
            initial=len(trials) - len(pending) if alone else 0,
            unit="trial",
            desc="sweep" if alone else f"sweep, rank 0 of {ranks.world_size}",
            disable=not (progress and ranks.is_main),
        )
        store = TrialStore(shard_path(out, ranks.rank, ranks.world_size))
        known: dict[tuple[str, str], EncodedPrompt] = {}  # each prompt tokenised once
        try:
            for chunk in mine:
                store.append(_run_batch(model, spec, chunk, builders, frozen, common, fast, known))
                bar.update(len(chunk))
        except KeyboardInterrupt:
            logger.warning(
                "interrupted: the finished batches are saved in %s; run the same call again "
                "to resume",
                out,
            )
            raise
        finally:
            bar.close()
        ranks.barrier()  # rank 0 holds the folder's lock until every rank is done
    return load_results(out)


def _open_folder(
    model: TLModel,
    spec: SweepSpec,
    trials: Sequence[Trial],
    builders: Mapping[str, PromptBuilder],
    given: Vectors | None,
    out: Path,
    note: str | None = None,
) -> tuple[dict[str, Any], set[str], Frozen]:
    """Bind ``out`` to this sweep, cut torn last lines, freeze the injections or check them.

    Returns (meta, ids already done, the frozen injections). Until a trial is written the
    injections are frozen again on every run (nothing was computed from them yet); then they
    are read back, and must be this spec's and model's and those of the written trials.
    """
    has_trials = bool(read_trials(out))
    meta = _run_meta(model, spec, trials, builders)
    if has_trials:
        _check_pack(out, meta["prompt_pack"])
    meta["notes"] = [note] if note else []
    _bind_folder(out, meta, has_trials)
    written = read_trials(out, repair=True)
    done = {r["trial_id"] for r in written}
    extra = done - {t.trial_id for t in trials}
    if extra:
        logger.warning("%s holds %d trials that this spec does not plan", out, len(extra))
    if written and (out / FROZEN_FILE).exists():
        frozen = load_frozen(out)
        frozen.check(spec, meta["model"])
        if given is not None:
            frozen.check_given(given)
    else:  # a new sweep, or one written before injections were frozen
        keys = sorted({(t.layer, t.concept) for t in trials if t.layer is not None and t.concept})
        frozen = freeze(out, spec, meta["model"], _resolve_vectors(model, spec, keys, given))
    frozen.check_written(written)
    return meta, done, frozen


def pack_prompts(spec: SweepSpec) -> dict[str, PromptBuilder]:
    """The builders of every registered protocol, with the texts of the spec's prompt pack."""
    if spec.pack.is_default:
        return dict(PROMPTS)
    return {n: ProtocolBuilder(p) for n, p in protocols_of(spec.pack).items()}


def _check_pack(out: Path, pack: Mapping[str, Any]) -> None:
    """Refuse to resume ``out`` with a prompt pack other than the one its trials were run with
    (the texts may differ where the folder's prompt probes do not show it)."""
    path = out / SPEC_FILE
    if not path.exists():
        return
    old = json.loads(path.read_text("utf-8")).get("prompt_pack")
    if old is None or old["hash"] == pack["hash"] or (old.get("default") and pack["default"]):
        return  # a folder from before packs was run with the default pack: the spec tells
    raise ValueError(
        f"{out} was run with prompt pack {old['name']!r} version {old['version']} (hash "
        f"{old['hash']}, {old['source']}), and this run has {pack['name']!r} version "
        f"{pack['version']} (hash {pack['hash']}, {pack['source']}): resuming would mix "
        "two sets of prompts. Use a new output folder (--out), or the folder's pack."
    )


def _warn_if_batching_changed(out: Path, size: int) -> None:
    """Warn that the trials left will not run in the batches the first ones ran in."""
    earlier = sorted({r["batch_size"] for r in load_runs(out) if r["pending"]} - {size})
    if earlier:
        logger.warning(
            "resuming %s in batches of %d where earlier runs used %s: readouts may differ from "
            "an uninterrupted run's in the last bits (and a reply, where two tokens nearly tie)",
            out,
            size,
            ", ".join(map(str, earlier)),
        )


def _run_record(
    ranks: Ranks,
    size: int,
    requested: int | str,
    n_trials: int,
    n_pending: int,
    everyone: Sequence[Mapping[str, Any]],
    path: str,
) -> dict[str, Any]:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "world_size": ranks.world_size,
        "batch_size": size,
        "batch_size_requested": requested,
        "trials": n_trials,
        "pending": n_pending,
        "ranks": list(everyone),
        "path": path,
        "versions": library_versions(),
    }
