"""Data-parallel sweeps: 2 gloo ranks on the CPU equal one process, trial for trial; a dead
rank's shard resumes; the store merges shards of any world size; ``mechintro sweep --nproc``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mechintro.experiments.distributed import Ranks, rank_device, torchrun_command
from mechintro.experiments.sweeps import SweepSpec, Trial, load_results, plan, run_sweep
from mechintro.experiments.sweeps.store import load_runs, read_trials, trial_files
from mechintro.models import load_model
from mechintro.prompts import Prompt

CONCEPTS = ("Dust", "Peace")
LAYERS = (1, 2)


def short_prompt(trial: Trial) -> Prompt:
    return Prompt.chat(f"Trial {trial.trial_number}: Do you detect an injected thought?")


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
    return SweepSpec(**{**fields, **changes})  # 20 trials


def _rank_main(
    rank: int,
    world: int,
    init_file: str,
    model_dir: str,
    out: str,
    spec_data: dict,
    batch_size: int,
    fail_rank: int,
) -> None:
    """One rank of a gloo job: run the sweep; rank ``fail_rank`` dies after its first batch."""
    import torch.distributed as dist

    from mechintro.experiments.sweeps import runner

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if rank == fail_rank:
            real, calls = runner.generate, []

            def dies_on_second_batch(*args, **kwargs):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError(f"rank {rank} dies")
                return real(*args, **kwargs)

            runner.generate = dies_on_second_batch
        model = load_model(model_dir)
        spec = SweepSpec.from_dict(spec_data)
        run_sweep(model, spec, out, prompts=PROMPTS, batch_size=batch_size, progress=False)
    finally:
        dist.destroy_process_group()


def run_ranks(
    model_dir: Path, out: Path, spec: SweepSpec, tmp: Path, *, batch_size=4, world=2, fail=-1
):
    init = tmp / f"init-{len(list(tmp.glob('init-*')))}"
    args = (world, str(init), str(model_dir), str(out), spec.to_dict(), batch_size, fail)
    mp.spawn(_rank_main, args=args, nprocs=world, join=True)


def records(out: Path) -> dict[str, dict]:
    recs = read_trials(out)
    ids = [r["trial_id"] for r in recs]
    assert len(ids) == len(set(ids)), "a trial was written twice"
    return {r["trial_id"]: r for r in recs}


def assert_same_trials(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys()
    for tid in a:
        for key in ("seed", "tokens", "reply", "prompt_ids_sha256"):
            assert a[tid][key] == b[tid][key], (key, a[tid])
        assert a[tid]["b"] == pytest.approx(b[tid]["b"], abs=1e-4)


@pytest.fixture(scope="module")
def llama(tiny_dirs: dict[str, Path]):
    return load_model(tiny_dirs["llama"])


@pytest.fixture(scope="module")
def single(llama, tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """Each spec run by one process, in one batch: the reference."""
    out = {}
    for temperature in (0.0, 1.0):
        folder = tmp_path_factory.mktemp(f"single-{temperature}")
        spec = make_spec(temperature=temperature)
        run_sweep(llama, spec, folder, prompts=PROMPTS, batch_size=64, progress=False)
        out[temperature] = folder
    return out


# ---------------------------------------------------------------------------------------------
# two gloo ranks


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_two_ranks_equal_one_process_trial_for_trial(tiny_dirs, single, tmp_path, temperature):
    spec = make_spec(temperature=temperature)
    out = tmp_path / "out"
    run_ranks(tiny_dirs["llama"], out, spec, tmp_path)
    assert [p.name for p in trial_files(out)] == ["trials.rank0.jsonl", "trials.rank1.jsonl"]
    shards = [[json.loads(x) for x in p.read_text().splitlines()] for p in trial_files(out)]
    assert [len(s) for s in shards] == [12, 8]  # batches 0, 2, 4 and 1, 3 of 5
    assert {r["batch"]["rank"] for r in shards[1]} == {1}
    assert {r["batch"]["world_size"] for s in shards for r in s} == {2}
    merged = records(out)
    assert set(merged) == {t.trial_id for t in plan(spec)}
    assert_same_trials(merged, records(single[temperature]))
    df = load_results(out)
    assert df.trial_id.tolist() == [t.trial_id for t in plan(spec)]  # merged in plan order
    if temperature == 1.0:  # the injection and the sampling both show in the replies
        assert len({tuple(t) for t in df.tokens}) > len(df) // 2
    (run,) = load_runs(out)
    assert run["world_size"] == 2 and run["batch_size"] == 4 and run["pending"] == 20
    assert [r["rank"] for r in run["ranks"]] == [0, 1]
    plan0 = run["ranks"][0]["memory"]
    assert plan0["fits"] and plan0["batch_size"] == 4 and plan0["weights"] > 0


def test_a_dead_rank_resumes_without_loss_or_duplicates(tiny_dirs, single, tmp_path):
    spec = make_spec()
    out = tmp_path / "out"
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 dies"):
        run_ranks(tiny_dirs["llama"], out, spec, tmp_path, fail=1)
    rank1 = out / "trials.rank1.jsonl"
    assert len(rank1.read_text().splitlines()) == 4  # its first batch, then it died
    kept = {p.name: p.read_bytes() for p in trial_files(out)}
    assert 4 <= len(read_trials(out)) < 20
    run_ranks(tiny_dirs["llama"], out, spec, tmp_path)  # the same job again: resumes
    for name, data in kept.items():
        assert (out / name).read_bytes().startswith(data)  # kept, not re-run
    assert_same_trials(records(out), records(single[1.0]))
    assert [r["pending"] for r in load_runs(out)] == [
        20,
        20 - sum(len(d.splitlines()) for d in kept.values()),
    ]


# ---------------------------------------------------------------------------------------------
# the store's shards, one process


def test_shards_of_any_world_size_merge_and_resume_in_one_process(llama, single, tmp_path):
    ref = single[1.0]
    shutil.copytree(ref, tmp_path, dirs_exist_ok=True)
    lines = (tmp_path / "trials.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "trials.jsonl").unlink()
    # a 3-rank run's shards, the last one torn mid-record, and a trial written twice
    (tmp_path / "trials.rank0.jsonl").write_text("".join(lines[0:15:3] + lines[:1]))
    (tmp_path / "trials.rank1.jsonl").write_text("".join(lines[1:15:3]))
    torn = lines[2:15:3]
    (tmp_path / "trials.rank2.jsonl").write_text("".join(torn[:-1]) + torn[-1][:40])
    (tmp_path / "trials.rankX.jsonl").write_text("not a shard")  # ignored
    df = load_results(tmp_path)
    assert len(df) == 14 and df.trial_id.is_unique
    order = [t.trial_id for t in plan(make_spec())]
    assert df.trial_id.tolist() == [i for i in order if i in set(df.trial_id)]
    run_sweep(llama, make_spec(), tmp_path, prompts=PROMPTS, batch_size=3, progress=False)
    assert (tmp_path / "trials.rank2.jsonl").read_text().endswith("\n")  # torn line cut
    assert len((tmp_path / "trials.jsonl").read_text().splitlines()) == 6  # 5 new + the torn
    merged = {r["trial_id"]: r for r in read_trials(tmp_path)}
    assert_same_trials(merged, records(ref))
    assert load_results(tmp_path).trial_id.tolist() == order


def test_memory_plan_chooses_and_records_the_batch_size(llama, tmp_path):
    spec = make_spec()
    run_sweep(llama, spec, tmp_path, prompts=PROMPTS, batch_size="auto", progress=False)
    (run,) = load_runs(tmp_path)
    memory = run["ranks"][0]["memory"]
    assert run["batch_size_requested"] == "auto" and memory["requested"] == "auto"
    assert run["batch_size"] == memory["batch_size"] == len(spec)  # the tiny model: all fit
    assert memory["weights"] == 4 * sum(p.numel() for p in llama.parameters())
    assert memory["weights_resident"] and memory["fits"] and memory["devices"] == ["cpu"]
    assert {r["batch"]["size"] for r in records(tmp_path).values()} == {len(spec)}
    with pytest.raises(ValueError, match="positive int or 'auto'"):
        run_sweep(llama, spec, tmp_path, prompts=PROMPTS, batch_size="big", progress=False)


# ---------------------------------------------------------------------------------------------
# ranks, devices and the launch line


def test_ranks_share_batches_round_robin_and_map_devices():
    items = list(range(11))
    shares = [Ranks(r, 3).share(items) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    one = Ranks()
    assert one.share(items) == items and one.broadcast("x") == "x" and one.all_gather(1) == [1]
    assert rank_device("cpu", Ranks(1, 2, 1)) == "cpu"
    assert rank_device("cuda:3", Ranks()) == "cuda:3"  # one process: the device as given
    if torch.cuda.device_count() < 8:
        with pytest.raises(RuntimeError, match="at most one process per GPU"):
            rank_device("cuda", Ranks(7, 8, 7))
    cmd = torchrun_command(["sweep", "--out", "x"], 2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in cmd and cmd[-5:] == [
        "-m",
        "mechintro.app.cli",
        "sweep",
        "--out",
        "x",
    ]


def test_cli_nproc_runs_torchrun_and_equals_one_process(tiny_dirs, tmp_path, monkeypatch):
    from mechintro.app.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [
        "sweep",
        "--model",
        str(tiny_dirs["llama"]),
        "--concepts",
        "Dust",
        "Peace",
        "--layers",
        "1",
        "--strengths",
        "8",
        "--n-controls",
        "2",
        "--max-new-tokens",
        "3",
        "--baseline",
        "Milk",
        "Stone",
        "Tree",
        "--batch-size",
        "2",
    ]
    assert main([*args, "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = records(tmp_path / "two"), records(tmp_path / "one")
    assert [p.name for p in trial_files(tmp_path / "two")] == [
        "trials.rank0.jsonl",
        "trials.rank1.jsonl",
    ]
    assert len(two) == 4
    assert_same_trials(two, one)
    assert load_runs(tmp_path / "two")[0]["world_size"] == 2


# ---------------------------------------------------------------------------------------------
# a model split by accelerate (every device the CPU here: the hooks run, the devices are one)


def test_a_dispatched_model_passes_parity_and_sweeps_like_the_whole_one(
    tiny_dirs, single, tmp_path, monkeypatch
):
    from accelerate import dispatch_model
    from accelerate.hooks import AlignDevicesHook
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechintro.analysis.parity import parity_check
    from mechintro.models import model_info

    folder = tiny_dirs["llama"]
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    modules = [
        "model.embed_tokens",
        *(f"model.layers.{i}" for i in range(4)),
        "model.norm",
        "model.rotary_emb",
        "lm_head",
    ]
    hf = dispatch_model(hf, device_map=dict.fromkeys(modules, "cpu"), force_hooks=True)
    assert not any(p.device.type == "meta" for p in hf.parameters())
    model = load_model(hf, tokenizer=AutoTokenizer.from_pretrained(folder))
    assert model.original_model.hf_device_map == dict.fromkeys(modules, "cpu")
    moved = []  # accelerate's hook, which moves each layer's inputs to its device
    real = AlignDevicesHook.pre_forward

    def spy(self, module, *args, **kwargs):
        moved.append(type(module).__name__)
        return real(self, module, *args, **kwargs)

    monkeypatch.setattr(AlignDevicesHook, "pre_forward", spy)
    report = parity_check(model, "Trial 1: Do you detect an injected thought?")
    assert report.ok(atol=1e-4), report
    assert {"LlamaDecoderLayer", "Embedding"} <= set(moved)  # the bridge runs through it
    moved.clear()
    run_sweep(model, make_spec(), tmp_path / "split", prompts=PROMPTS, progress=False)
    assert "LlamaDecoderLayer" in moved
    assert_same_trials(records(tmp_path / "split"), records(single[1.0]))
    # load_model's own device_map: placed by from_pretrained, not moved again
    mapped = load_model(folder, device_map="cpu")
    assert model_info(mapped).device == "cpu"
    run_sweep(mapped, make_spec(), tmp_path / "mapped", prompts=PROMPTS, progress=False)
    assert_same_trials(records(tmp_path / "mapped"), records(single[1.0]))


def test_split_options_are_checked_before_loading(tiny_dirs):
    folder = tiny_dirs["llama"]
    with pytest.raises(ValueError, match="n_devices=N"):
        load_model(folder, backend="hooked", device_map="auto")
    with pytest.raises(ValueError, match="not both"):
        load_model(folder, device_map="auto", n_devices=2)
    with pytest.raises(ValueError, match="exclude each other"):
        load_model(folder, device="cuda", device_map="auto")
    with pytest.raises(ValueError, match="device='cuda'"):
        load_model(folder, backend="hooked", n_devices=2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="requires CUDA"):
            load_model(folder, n_devices=2)


def test_the_multigpu_benchmark_runs_on_the_cpu(tmp_path, monkeypatch):
    """benchmarks/multigpu.py with CPU ranks: its three runs, identities and verdicts."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # its runs start `python -m benchmarks.multigpu` from here
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from benchmarks import multigpu

    out = tmp_path / "bench"
    sizes = ["--concepts", "3", "--trial-numbers", "2", "--controls", "2"]
    sizes += ["--new-tokens", "3", "--batch", "2"]
    argv = ["--device", "cpu", "--shape", "tiny-gemma3", "--out", str(out), *sizes]
    assert multigpu.main(argv) == 0
    summary = json.loads((out / "multigpu.json").read_text())
    assert summary["exit_codes"] == {"one": 0, "two": 0, "split": 0}
    verdicts = summary["verdicts"]
    assert set(verdicts) == {
        "throughput two / one",
        "two == one, trial for trial",
        "two: every rank has the same weights",
        "split: parity self-check",
        "split == one, trial for trial",
    }
    for name in set(verdicts) - {"throughput two / one"}:  # 2 CPU ranks need not be faster
        assert verdicts[name]["pass"], (name, verdicts[name])
    assert verdicts["two == one, trial for trial"]["equal_tokens"] == 8
    assert summary["runs"]["two"]["world_size"] == 2
    assert summary["runs"]["split"]["device_map_layers"] == {"cpu": 4}
    assert "| split: parity self-check |" in (out / "multigpu.md").read_text()
