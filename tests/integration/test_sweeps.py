"""Sweeps: deterministic trial ids, batched = one by one, resume after any interruption."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mechintro.experiments.sweeps import (
    SweepSpec,
    Trial,
    batches,
    load_results,
    load_runs,
    plan,
    run_sweep,
)
from mechintro.experiments.sweeps import (
    runner as sweeps,  # where run_sweep looks up generate, fingerprint
)
from mechintro.experiments.sweeps.frozen import FROZEN_FILE, FROZEN_TENSORS, load_frozen, row_vector
from mechintro.models import load_model
from mechintro.prompts import Prompt
from mechintro.record import library_versions
from mechintro.vectors import ConceptVector, extract_vectors

LAYERS = (1, 2)
CONCEPTS = ("Dust", "Peace")


def short_prompt(trial: Trial) -> Prompt:
    """A short detection question: the tiny model's byte tokenizer makes the real one 600 long."""
    return Prompt.chat(f"Trial {trial.trial_number}: Do you detect an injected thought?")


short_prompt.version = "short/1"  # type: ignore[attr-defined]
PROMPTS = {"short": short_prompt}


def make_spec(**changes) -> SweepSpec:
    fields = dict(
        concepts=CONCEPTS,
        layers=LAYERS,
        strengths=(0.0, 8.0),
        protocols=("short",),
        trial_numbers=(1, 10),
        n_controls=4,
        max_new_tokens=4,
        temperature=1.0,
        seed=3,
    )
    return SweepSpec(**{**fields, **changes})


SPEC = make_spec()  # 2 concepts x 2 layers x 2 strengths x 2 trial numbers + 4 controls = 20


@pytest.fixture(scope="module")
def llama(tiny_dirs: dict[str, Path]):
    return load_model(tiny_dirs["llama"])


@pytest.fixture(scope="module")
def vectors(llama, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("vectors")
    return {L: extract_vectors(llama, list(CONCEPTS), layer=L, cache_dir=cache) for L in LAYERS}


@pytest.fixture(scope="module")
def reference(llama, vectors, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SPEC run uninterrupted, all trials in one mixed batch."""
    out = tmp_path_factory.mktemp("reference")
    run_sweep(llama, SPEC, out, vectors=vectors, prompts=PROMPTS, batch_size=64, progress=False)
    return out


def records(out: Path) -> list[dict]:
    lines = (out / "trials.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def by_id(out: Path) -> dict[str, dict]:
    recs = records(out)
    ids = [r["trial_id"] for r in recs]
    assert len(ids) == len(set(ids)), "a trial was written twice"
    return {r["trial_id"]: r for r in recs}


def comparable(out: Path) -> dict[str, dict]:
    """Every record by id, less what legitimately differs from run to run: when it was written
    and how long its batch took. Everything else must be the same however the sweep ran."""
    recs = by_id(out)
    for r in recs.values():
        del r["written_at"]
        for timing in ("generate_seconds", "readout_seconds", "seconds_per_trial"):
            del r["batch"][timing]
    return recs


def assert_same_results(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys()
    for tid in a:
        assert a[tid]["tokens"] == b[tid]["tokens"], a[tid]
        assert a[tid]["b"] == pytest.approx(b[tid]["b"], abs=1e-4)


def assert_same_injections(a: dict[str, dict], b: dict[str, dict]) -> None:
    """The same results, each trial injected as in the other run (vector, norms, strength)."""
    assert_same_results(a, b)
    assert {k: r["injection"] for k, r in a.items()} == {k: r["injection"] for k, r in b.items()}


# ---------------------------------------------------------------------------------------------
# the plan


def test_trial_ids_are_deterministic_and_name_the_content():
    trials = plan(SPEC)
    ids = [t.trial_id for t in trials]
    assert len(trials) == len(SPEC) == 20
    assert len(set(ids)) == len(ids)
    assert len({t.seed for t in trials}) == len(trials)  # every trial its own seed
    assert [t.trial_id for t in plan(make_spec())] == ids
    # the order of the spec's lists does not matter, nor 8 vs 8.0
    shuffled = make_spec(
        concepts=CONCEPTS[::-1], layers=LAYERS[::-1], strengths=(8, 0), trial_numbers=(10, 1)
    )
    assert shuffled.key == SPEC.key
    assert [(t.trial_id, t.seed) for t in plan(shuffled)] == [(t.trial_id, t.seed) for t in trials]
    # anything that changes a result changes the id; the vector settings leave controls alone
    controls = {t.trial_id for t in trials if t.control}
    for change in ({"seed": 4}, {"temperature": 0.5}, {"max_new_tokens": 5}):
        assert not set(ids) & {t.trial_id for t in plan(make_spec(**change))}, change
    for change in (
        {"method": "fonseca"},
        {"unit": "resid-norm"},
        {"modes": ("prompt-only",)},
        {"start": "first"},
    ):
        assert set(ids) & {t.trial_id for t in plan(make_spec(**change))} == controls, change
    # growing the grid keeps the ids of the trials it already had
    grown = {t.trial_id for t in plan(make_spec(concepts=(*CONCEPTS, "Milk"), n_controls=6))}
    assert set(ids) < grown and len(grown) == 20 + 8 + 2
    # a trial's id is recomputed from its record, and a tampered record is refused
    t = trials[0]
    assert Trial.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    with pytest.raises(ValueError, match="does not hash"):
        Trial.from_dict({**t.to_dict(), "strength": 9.0})


def test_spec_round_trips_through_json_and_validates(unchecked):
    spec = make_spec(template_kwargs={"enable_thinking": False}, modes=("from-trial", "all"))
    again = SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.key == spec.key and hash(again) == hash(spec)
    with pytest.raises(ValueError, match="unknown sweep spec fields"):
        SweepSpec.from_dict({**spec.to_dict(), "concept": ["Dust"]})
    with pytest.raises(ValueError, match="more than once"):
        make_spec(concepts=("Dust", "Dust"))
    with unchecked(), pytest.raises(ValueError, match="layer_at_depth"):  # SweepSpec's own
        make_spec(layers=(0.6,))
    with pytest.raises(ValueError, match="unknown position mode"):
        make_spec(modes=("everywhere",))
    with pytest.raises(ValueError, match="grid is empty"):
        make_spec(concepts=(), n_controls=0)


def test_batches_mix_cells_and_spread_controls():
    trials = plan(SPEC)
    chunks = batches(trials, 5)
    flat = [t.trial_id for c in chunks for t in c]
    assert sorted(flat) == sorted(t.trial_id for t in trials)  # each trial once
    assert [len(c) for c in chunks] == [5, 5, 5, 5]
    for c in chunks:  # every batch holds a control and injected rows of several cells
        assert sum(t.control for t in c) == 1
        assert len({(t.concept, t.strength, t.trial_number) for t in c if not t.control}) == 4


@pytest.mark.parametrize("unit", ["raw", "resid-norm"])
def test_one_injection_per_layer_with_zero_rows_elsewhere(vectors, unit):
    trials = plan(make_spec(unit=unit))
    chunk = batches(trials, 20)[0]
    rows = {(L, w): row_vector(v, unit) for L, ws in vectors.items() for w, v in ws.items()}
    injections = sweeps._injections(chunk, rows)
    assert [i.layer for i in injections] == list(LAYERS)
    for inj in injections:
        norms = inj.deltas(len(chunk)).norm(dim=-1)
        for t, n in zip(chunk, norms.tolist()):
            if not (t.injected and t.layer == inj.layer):
                assert n == 0.0  # controls, strength 0, other layers: untouched
                continue
            v = vectors[t.layer][t.concept]
            want = t.strength * (v.norm if unit == "raw" else v.resid_norm)
            assert n == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# running


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_batched_sweep_equals_trials_run_one_by_one(llama, vectors, tmp_path, temperature):
    spec = make_spec(temperature=temperature)
    kw = dict(vectors=vectors, prompts=PROMPTS, progress=False)
    df = run_sweep(llama, spec, tmp_path / "big", batch_size=64, **kw)
    run_sweep(llama, spec, tmp_path / "one", batch_size=1, **kw)
    big, one = by_id(tmp_path / "big"), by_id(tmp_path / "one")
    assert set(big) == {t.trial_id for t in plan(spec)}
    assert {r["batch"]["size"] for r in big.values()} == {20}  # one batch: 2 layers, controls
    assert {r["batch"]["size"] for r in one.values()} == {1}
    assert_same_results(big, one)
    # the injection is really applied, and a strength-0 row is a control
    inj = df[df.strength == 8.0]
    zero = df[(df.strength == 0.0) & ~df.control]
    assert inj.tokens.tolist() != zero.tokens.tolist()
    assert inj["injection.vector.norm"].notna().all() and df.loc[df.control, "layer"].isna().all()
    if temperature == 0.0:
        ctl = df[df.control].groupby("trial_number").tokens.first()
        for _, r in zero.iterrows():
            assert r.tokens == ctl[r.trial_number]
    assert len(df) == 20 and df.trial_id.tolist() == [t.trial_id for t in plan(spec)]


def test_record_holds_inputs_seed_reply_readouts_and_versions(reference):
    r = next(r for r in records(reference) if r["injected"])
    trial = Trial.from_dict(r)
    assert r["trial_id"] == trial.trial_id and r["seed"] == trial.seed
    assert "Trial" in r["prompt_text"] and len(r["prompt_ids_sha256"]) == 64
    assert r["prompt_version"] == "short/1"
    assert r["injection"]["vector"]["word"] == r["concept"]
    assert r["injection"]["vector"]["layer"] == r["layer"]
    assert isinstance(r["b"], float) and isinstance(r["b_variants"], float)
    assert isinstance(r["reply"], str) and r["n_tokens"] == len(r["tokens"])
    assert set(r["versions"]) >= {"mechintro", "torch", "transformer-lens"}
    assert len(r["model"]["fingerprint"]) == 16
    assert r["generation_path"] == "twin"  # the tiny Llama on the bridge runs on its HF twin
    meta = json.loads((reference / "spec.json").read_text())
    assert SweepSpec.from_dict(meta["spec"]) == SPEC
    assert meta["model"]["fingerprint"] == r["model"]["fingerprint"]
    (run,) = load_runs(reference)
    assert run["path"] == "twin" and run["versions"] == library_versions()


def test_default_detection_protocol_and_vectors_extracted_into_the_folder(llama, tmp_path):
    spec = SweepSpec(
        concepts=("Dust",), layers=(1,), protocols=("detection", "forced"), max_new_tokens=2
    )
    df = run_sweep(llama, spec, tmp_path, batch_size=8, progress=False)
    assert len(df) == 2 and set(df.protocol) == {"detection", "forced"}
    forced = df[df.protocol == "forced"].prompt_text.item()
    assert forced.endswith("Yes, I detect an injected thought. The thought is about")
    frozen = load_frozen(tmp_path)
    assert list(frozen.vectors) == [(1, "Dust")]
    vector = frozen.records[(1, "Dust")]
    assert all(r["injection"]["vector"] == vector for r in by_id(tmp_path).values())


# ---------------------------------------------------------------------------------------------
# resuming


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_resume_after_an_error_mid_run(llama, vectors, reference, tmp_path, monkeypatch, error):
    calls = []
    real = sweeps.generate

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps, "generate", failing)
    kw = dict(vectors=vectors, prompts=PROMPTS, batch_size=4, progress=False)
    with pytest.raises(error):
        run_sweep(llama, SPEC, tmp_path, **kw)
    before = (tmp_path / "trials.jsonl").read_bytes()
    assert len(records(tmp_path)) == 8  # two batches saved, the third lost
    monkeypatch.setattr(sweeps, "generate", real)
    run_sweep(llama, SPEC, tmp_path, **kw)
    assert (tmp_path / "trials.jsonl").read_bytes().startswith(before)  # nothing re-run
    assert_same_results(by_id(tmp_path), by_id(reference))


#: Three concepts whose strengths are in units of the layer's mean residual norm: a norm
#: averaged over the pending concepts only (extracted again on resume) would show in the
#: replies. Prompts of three lengths: a resumed batch holding other rows than the uninterrupted
#: run's would pad them otherwise, which shows in the readouts' last bits.
NORM_SPEC = make_spec(
    concepts=("Dust", "Milk", "Peace"),
    strengths=(8.0,),
    trial_numbers=(1, 10, 100),
    n_controls=6,
    max_new_tokens=3,
    unit="resid-norm",
    baseline=("Stone", "Tree"),
)  # 3 concepts x 2 layers x 3 trial numbers + 6 controls = 24 trials: 5 batches of 5


@pytest.mark.parametrize("seed", [0, 3])
def test_resumed_at_random_points_equals_uninterrupted_in_every_field(
    llama, tmp_path, monkeypatch, seed
):
    """Three interruptions at random batches (Ctrl-C), some leaving a torn line (kill -9
    mid-write), then resumed: every record equals an uninterrupted run's, bit for bit."""
    kw = dict(prompts=PROMPTS, batch_size=5, progress=False)
    run_sweep(llama, NORM_SPEC, tmp_path / "whole", **kw)
    whole = (tmp_path / "whole" / "trials.jsonl").read_text().splitlines(keepends=True)
    assert len(whole) == 24
    rng = random.Random(seed)
    stops = set(rng.sample(range(1, 6), 3))  # the generate calls that are interrupted
    calls: list[int] = []
    real = sweeps.generate

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) in stops:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps, "generate", interrupted)
    out = tmp_path / "resumed"
    for _ in stops:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(llama, NORM_SPEC, out, **kw)
        if rng.random() < 0.5:  # killed in the middle of the next batch's write
            line = rng.choice(whole)
            with open(out / "trials.jsonl", "a") as f:
                f.write(line[: rng.randrange(1, len(line) - 1)])
    run_sweep(llama, NORM_SPEC, out, **kw)
    assert len(calls) == 5 + 3
    assert comparable(out) == comparable(tmp_path / "whole")
    runs = load_runs(out)
    assert len(runs) == 4 and runs[-1]["pending"] < 24
    assert {(r["path"], r["batch_size"]) for r in runs} == {("twin", 5)}


def test_the_frozen_injections_are_reused_and_checked_on_resume(
    llama, vectors, reference, tmp_path
):
    """The vectors given on the first run are frozen: a resume needs them no more, and refuses
    other vectors, injections frozen for another model, a damaged tensor file, and trials
    injected with vectors other than the frozen ones (a folder resumed by the old code)."""
    frozen = load_frozen(reference)
    assert sorted(frozen.vectors) == [(L, w) for L in LAYERS for w in CONCEPTS]
    for (L, w), v in frozen.vectors.items():
        given = vectors[L][w]
        assert torch.equal(v.vector, given.vector) and v.resid_norm == given.resid_norm
        assert torch.equal(frozen.rows[(L, w)], v.vector)  # unit="raw": a strength multiplies v

    def partial(name: str) -> Path:
        """The reference, stopped after 10 trials (the other 10 then run in a batch of their
        own: the same replies, readouts to float tolerance)."""
        out = tmp_path / name
        shutil.copytree(reference, out)
        lines = (out / "trials.jsonl").read_text().splitlines(keepends=True)
        (out / "trials.jsonl").write_text("".join(lines[:10]))
        return out

    kw = dict(prompts=PROMPTS, batch_size=64, progress=False)
    out = partial("no-vectors-given")
    run_sweep(llama, SPEC, out, **kw)  # no vectors=: the frozen ones
    assert_same_injections(by_id(out), by_id(reference))

    other = {L: {w: ConceptVector(w, 2 * v.vector, L, "lindsey") for w, v in ws.items()}
             for L, ws in vectors.items()}  # fmt: skip
    with pytest.raises(ValueError, match=r"vectors= differs.*omit vectors=.*new output folder"):
        run_sweep(llama, SPEC, partial("other-vectors"), vectors=other, **kw)

    out = partial("other-model")
    meta = json.loads((out / FROZEN_FILE).read_text())
    meta["model"]["fingerprint"] = "0123456789abcdef"
    (out / FROZEN_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"another model weights.*new output folder.*or delete"):
        run_sweep(llama, SPEC, out, **kw)

    out = partial("damaged")
    (out / FROZEN_TENSORS).write_bytes((out / FROZEN_TENSORS).read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"frozen.safetensors is missing or is not the file"):
        run_sweep(llama, SPEC, out, **kw)

    # written before injections were frozen: frozen now, if the trials agree with them
    out = partial("unfrozen")
    (out / FROZEN_FILE).unlink()
    (out / FROZEN_TENSORS).unlink()
    path = out / "trials.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["injection"]["vector"]["resid_norm"] += 0.2  # re-extracted for fewer concepts
    path.write_text("".join([json.dumps(first) + "\n", *lines[1:]]))
    with pytest.raises(ValueError, match=r"\(1 of them\) were injected.*resid_norm .*new output"):
        run_sweep(llama, SPEC, out, vectors=vectors, **kw)
    path.write_text("".join(lines))
    run_sweep(llama, SPEC, out, vectors=vectors, **kw)
    assert_same_injections(by_id(out), by_id(reference))


def test_progress_bar_starts_at_the_trials_already_done(
    llama, vectors, reference, tmp_path, capsys, caplog
):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    lines = (tmp_path / "trials.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "trials.jsonl").write_text("".join(lines[:15]))
    with caplog.at_level(logging.INFO, logger="mechintro"):
        run_sweep(llama, SPEC, tmp_path, vectors=vectors, prompts=PROMPTS, batch_size=5)
    # not a terminal: the bar is a log line where it starts (resumed at 15) and where it ends
    bar = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep:")]
    assert [b.split()[1] for b in bar] == ["15/20", "20/20"], bar
    assert_same_results(by_id(tmp_path), by_id(reference))
    # the reference ran in one batch of 20: the rest of a batch runs alone, and that is said
    assert "in batches of 5 where earlier runs used 64" in caplog.text


def test_torn_last_line_is_cut_and_its_trial_run_again(llama, vectors, reference, tmp_path):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "trials.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # kill -9 mid-write
    assert last["trial_id"] not in set(load_results(tmp_path).trial_id)  # read while torn
    assert len(load_results(tmp_path)) == 19
    run_sweep(llama, SPEC, tmp_path, vectors=vectors, prompts=PROMPTS, progress=False)
    assert path.read_text().endswith("\n")
    done = by_id(tmp_path)
    assert_same_results(done, by_id(reference))
    assert done[last["trial_id"]]["written_at"] >= last["written_at"]


def test_a_damaged_line_before_the_end_is_refused(llama, vectors, reference, tmp_path):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "trials.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:3], "{not json\n", *lines[3:]]))
    with pytest.raises(ValueError, match="line 4 .*delete that line"):
        run_sweep(llama, SPEC, tmp_path, vectors=vectors, prompts=PROMPTS, progress=False)


def test_resume_refuses_another_spec_or_model(llama, vectors, reference, tmp_path, monkeypatch):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    kw = dict(vectors=vectors, prompts=PROMPTS, progress=False)
    with pytest.raises(ValueError, match=r"strengths.*new output folder.*same spec"):
        run_sweep(llama, make_spec(strengths=(0.0, 4.0)), tmp_path, **kw)
    monkeypatch.setattr(sweeps, "fingerprint", lambda model: "0123456789abcdef")
    with pytest.raises(ValueError, match=r"model weights.*new output folder"):
        run_sweep(llama, SPEC, tmp_path, **kw)
    monkeypatch.undo()

    def other_prompt(trial: Trial) -> Prompt:
        return Prompt.chat(f"Trial {trial.trial_number}: Anything unusual?")

    with pytest.raises(ValueError, match="'short' prompt"):
        run_sweep(llama, SPEC, tmp_path, vectors=vectors, prompts={"short": other_prompt})
    # the same spec written in another order resumes, and runs nothing
    before = (tmp_path / "trials.jsonl").read_bytes()
    shuffled = make_spec(concepts=CONCEPTS[::-1], strengths=(8.0, 0.0))
    run_sweep(llama, shuffled, tmp_path, batch_size=3, **kw)
    assert (tmp_path / "trials.jsonl").read_bytes() == before


def test_a_prompt_without_the_injection_start_is_refused(llama, vectors, tmp_path):
    def plain(trial: Trial) -> Prompt:
        return Prompt.chat("Do you detect an injected thought?")

    spec = make_spec(protocols=("plain",))
    with pytest.raises(ValueError, match="no 'trial' position.*'Trial n'"):
        run_sweep(llama, spec, tmp_path, vectors=vectors, prompts={"plain": plain})
    df = run_sweep(
        llama,
        make_spec(protocols=("plain",), modes=("single-token",)),
        tmp_path / "ok",
        vectors=vectors,
        prompts={"plain": plain},
        progress=False,
    )
    assert len(df) == 20


def test_a_second_writer_is_refused(llama, vectors, tmp_path):
    with sweeps._locked(tmp_path), pytest.raises(RuntimeError, match="another process"):
        run_sweep(llama, SPEC, tmp_path, vectors=vectors, prompts=PROMPTS, progress=False)


CHILD = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_sweeps
import mechintro.experiments.sweeps as sweeps
from mechintro.models import load_model

model_dir, out, mode = sys.argv[1:4]
if mode == "torn":  # die by SIGKILL halfway through the second batch's write
    seen = []
    real = sweeps.TrialStore._write

    def write(f, data):
        seen.append(1)
        if len(seen) == 2:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        real(f, data)

    sweeps.TrialStore._write = staticmethod(write)
spec = sweeps.SweepSpec.from_dict(json.loads(Path(out, "wanted.json").read_text()))
sweeps.run_sweep(load_model(model_dir), spec, out, prompts=test_sweeps.PROMPTS, batch_size=3,
                 progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["random", "torn"])
def test_resume_after_kill_9(llama, tiny_dirs, tmp_path, mode):
    """A real SIGKILL: at a moment of the parent's choosing, or in the middle of a write."""
    spec = make_spec(trial_numbers=(1, 2, 3, 10), n_controls=8, max_new_tokens=6)  # 40 trials
    out = tmp_path / "out"
    out.mkdir()
    (out / "wanted.json").write_text(json.dumps(spec.to_dict()))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, str(script), str(tiny_dirs["llama"]), str(out), mode]
    child = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    path = out / "trials.jsonl"
    if mode == "random":
        deadline = time.monotonic() + 120
        while not (path.exists() and path.read_bytes().count(b"\n") >= 6):
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the child wrote nothing"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()
    data = path.read_bytes()
    n_done = data.count(b"\n")
    assert 0 < n_done < len(spec)
    if mode == "torn":
        assert 3 <= n_done < 6 and not data.endswith(b"\n")  # a torn write really happened
    run_sweep(llama, spec, out, prompts=PROMPTS, batch_size=7, progress=False)
    done = by_id(out)
    assert set(done) == {t.trial_id for t in plan(spec)}
    assert path.read_bytes().startswith(data[: data.rfind(b"\n") + 1])  # kept, not re-run
    ref = tmp_path / "uninterrupted"
    run_sweep(llama, spec, ref, prompts=PROMPTS, batch_size=64, progress=False)
    assert_same_results(done, by_id(ref))
