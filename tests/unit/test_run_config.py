"""``mechintro run CONFIG``: the dispatch table, the checks made before any model loads,
presets, finished folders, revisions and base checkpoints without a chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import mechintro.models
from mechintro.app import run_command
from mechintro.app.options import UsageError
from mechintro.app.run_command import DISPATCH, KINDS, entries, main, resolve, run_config
from tests.tiny_models import make_tokenizer

SWEEP = {
    "concepts": ["Dust", "Peace"],
    "layers": [1],
    "strengths": [4.0],
    "n_controls": 2,
    "max_new_tokens": 2,
    "readout": False,
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


def _toml(model: Path | str, table: str = "sweep", body: str = "") -> str:
    lines = [f'experiment = "{table}"', f"model = {json.dumps(str(model))}", "batch_size = 8"]
    lines += [f"[{table}]"]
    if not body:
        body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in SWEEP.items())
    return "\n".join([*lines, body, ""])


def test_every_kind_resolves_to_its_runner():
    """Fails until every module the dispatch table names provides its runner."""
    assert set(DISPATCH) == set(KINDS)
    for kind in KINDS:
        assert callable(resolve(kind)), kind


def test_unknown_keys_are_refused_with_the_valid_ones_named(tmp_path):
    bad_top = _write(tmp_path / "a.toml", 'experiment = "sweep"\nmodel = "m"\nmodle = 1\n')
    with pytest.raises(UsageError, match="unknown keys \\['modle'\\].*valid keys"):
        entries(run_command.read_config(bad_top), "a.toml")
    bad_param = _write(
        tmp_path / "b.toml", _toml("m", body='concepts = ["a"]\nlayers = [1]\nstrenght = 2')
    )
    with pytest.raises(UsageError, match="strenght.*valid fields"):
        entries(run_command.read_config(bad_param), "b.toml")
    spec = _write(tmp_path / "c.toml", 'model = "m"\n[spec]\nconcepts = ["a"]\n')
    with pytest.raises(UsageError, match='add experiment = "sweep"'):
        entries(run_command.read_config(spec), "c.toml")
    kind = _write(tmp_path / "d.toml", 'experiment = "sweeep"\nmodel = "m"\n')
    with pytest.raises(UsageError, match="use one of"):
        entries(run_command.read_config(kind), "d.toml")
    wrong = _write(
        tmp_path / "e.toml", 'experiment = "noise"\nmodel = "m"\n[sweep]\nlayers = [1]\n'
    )
    with pytest.raises(UsageError, match="do not belong to experiment 'noise'"):
        entries(run_command.read_config(wrong), "e.toml")


def test_every_experiment_is_checked_before_any_model_loads(tmp_path, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(mechintro.models, "load_model", no_load)
    text = f"""model = "m"
[[experiments]]
experiment = "sweep"
[experiments.sweep]
{chr(10).join(f"{k} = {json.dumps(v)}" for k, v in SWEEP.items())}
[[experiments]]
experiment = "train-lora"
[experiments.train-lora]
words = ["a"]
heldout = ["b"]
lr = -1.0
"""
    path = _write(tmp_path / "x.toml", text)
    assert main({"config": str(path), "out": str(tmp_path / "o")}) == 2
    assert not (tmp_path / "o").exists()


def test_presets_fill_the_parameters_and_must_match_the_kind(tmp_path):
    text = _toml("m")
    path = _write(tmp_path / "p.toml", 'preset = "macar-detection"\n' + text)
    (e,) = entries(run_command.read_config(path), "p.toml")
    assert e.preset is not None and "Macar" in e.preset["source"]
    assert list(e.params["trial_numbers"]) == list(range(1, 11))  # from the preset
    assert e.params["layers"] == [1] and "depths" not in e.params  # the config's layers win
    assert e.params["strengths"] == [4.0]
    wrong = _write(tmp_path / "w.toml", 'preset = "godet-noise"\n' + text)
    with pytest.raises(UsageError, match="configures 'noise' experiments, not 'sweep'"):
        entries(run_command.read_config(wrong), "w.toml")


def test_stages_are_checked_too(tmp_path):
    sweep = "\n".join(f"{k} = {json.dumps(v)}" for k, v in SWEEP.items())
    head = 'experiment = "stages"\n[stages]\nexperiment = "sweep"\n'
    same = 'checkpoints = [{label = "a", model = "m"}, {label = "a", model = "n"}]\n'
    path = _write(tmp_path / "s.toml", head + same + "[stages.sweep]\n" + sweep)
    with pytest.raises(UsageError, match="same labels"):
        entries(run_command.read_config(path), "s.toml")
    ok = 'checkpoints = [{label = "a", model = "m"}, {label = "b", model = "m", revision = "r1"}]\n'
    path = _write(tmp_path / "t.toml", head + ok + "[stages.sweep]\n" + sweep)
    (e,) = entries(run_command.read_config(path), "t.toml")
    assert e.kind == "stages" and e.params["checkpoints"][1]["revision"] == "r1"
    path = _write(tmp_path / "u.toml", head + ok + "[stages.sweep]\nlayers = [1]\n")
    with pytest.raises(UsageError, match="\\[stages\\] a: .*concepts"):
        entries(run_command.read_config(path), "u.toml")


def test_the_revision_reaches_from_pretrained(tmp_path, monkeypatch):
    seen = {}

    def fake(name, **kw):
        seen.update(kw, name=name)
        raise RuntimeError("stop")

    monkeypatch.setattr(mechintro.models, "load_model", fake)
    path = _write(tmp_path / "r.toml", 'revision = "stage1-step1000"\n' + _toml("org/model"))
    (e,) = entries(run_command.read_config(path), "r.toml")
    with pytest.raises(RuntimeError, match="stop"):
        run_command.load(e)
    assert seen["name"] == "org/model" and seen["revision"] == "stage1-step1000"


def test_a_finished_folder_is_not_recomputed(tiny_dirs, tmp_path, monkeypatch):
    path = _write(tmp_path / "f.toml", _toml(tiny_dirs["llama"]))
    out = tmp_path / "out"
    first = run_config(path, out)["sweep"]
    record = json.loads((out / "run.json").read_text())
    assert record["finished"] and record["model"]["name"] == str(tiny_dirs["llama"])
    assert record["model"]["revision"] is None and record["versions"]["torch"]
    assert (out / "sweep.csv").is_file() and (out / "report.html").is_file()
    assert (out / "run.html").is_file()

    def no_load(*a, **k):
        raise AssertionError("reloaded a finished run")

    monkeypatch.setattr(mechintro.models, "load_model", no_load)
    again = run_config(path, out)["sweep"]
    assert again.shape == first.shape
    other = _write(tmp_path / "g.toml", _toml(tiny_dirs["llama"]).replace("4.0", "2.0"))
    with pytest.raises(UsageError, match="finished run of another configuration"):
        run_config(other, out)


@pytest.fixture(scope="module")
def base_checkpoint(tiny_dirs, tmp_path_factory):
    """The tiny Llama with the same byte-level tokenizer but no chat template."""
    folder = tmp_path_factory.mktemp("base") / "llama-base"
    shutil.copytree(tiny_dirs["llama"], folder)
    for f in folder.glob("*token*"):
        f.unlink()
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    make_tokenizer(folder, "none")
    return folder


def test_a_base_checkpoint_runs_raw_and_the_record_and_page_say_so(base_checkpoint, tmp_path):
    body = "\n".join(
        f"{k} = {json.dumps(v)}" for k, v in {**SWEEP, "protocols": ["detection", "forced"]}.items()
    )
    path = _write(tmp_path / "b.toml", _toml(base_checkpoint, body=body))
    out = tmp_path / "base"
    run_config(path, out)
    note = json.loads((out / "run.json").read_text())["notes"][0]
    assert note.startswith("no chat template: raw format, method fonseca")
    assert "detection → detection/raw" in note and "forced → forced/raw" in note
    assert json.loads((out / "spec.json").read_text())["notes"] == [note]
    assert "no chat template: raw format, method fonseca" in (out / "run.html").read_text()


def test_training_words_can_name_a_shipped_word_list():
    from mechintro.app.kinds.training import split_train
    from mechintro.training.lora import LoRAConfig
    from mechintro.vectors import word_list

    cfg = {"words": "macar_train", "heldout": "fonseca_heldout", "baseline": "lindsey_baseline"}
    run, _ = split_train(cfg, LoRAConfig, "train-lora")
    held = word_list("fonseca_heldout")
    assert list(run.heldout) == held and list(run.baseline) == word_list("lindsey_baseline")
    # the named training list less the held-out words among it (5 of Fonseca's 20)
    assert list(run.words) == [w for w in word_list("macar_train") if w not in set(held)]
    assert len(run.words) == 395
    with pytest.raises(UsageError, match=r"\[train-lora\]: no word list named 'nope'"):
        split_train({"words": "nope", "heldout": ["x"]}, LoRAConfig, "train-lora")
