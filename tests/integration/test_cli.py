"""The command line end to end on a tiny model: sweep from a config file, resume, grade,
report; every --help; config errors that name the fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import mechintro.app.cli as cli
from mechintro.app.cli import main
from mechintro.app.report import GRADES_FILE, load_grades
from mechintro.experiments.sweeps import SweepSpec, load_results

TOML = """\
batch_size = 8
dtype = "float32"

[spec]
concepts = ["Dust", "Peace"]
layers = [1]
strengths = [0.0, 8.0]
protocols = ["detection", "forced"]
trial_numbers = [1, 2]
n_controls = 2
max_new_tokens = 3
"""
N_TRIALS = 2 * 2 * 2 * 2 + 2 * 2  # protocols x concepts x strengths x trial numbers + controls


_MODELS: dict = {}
_REAL_LOAD = cli._load


def _cached_load(*args, **kw):
    """Load each tiny model once for the module (the CLI would load it per command)."""
    key = (*args, *sorted(kw.items()))
    if key not in _MODELS:
        _MODELS[key] = _REAL_LOAD(*args, **kw)
    return _MODELS[key]


@pytest.fixture(autouse=True)
def cached_models(monkeypatch):
    monkeypatch.setattr(cli, "_load", _cached_load)


@pytest.fixture(scope="module")
def llama(tiny_dirs) -> str:
    return str(tiny_dirs["llama"])


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "sweep.toml"
    path.write_text(TOML)
    return path


@pytest.fixture(scope="module")
def swept(llama, config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "results"
    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "_load", _cached_load)
    try:
        assert main(["sweep", "--config", str(config), "--model", llama, "--out", str(out)]) == 0
    finally:
        mp.undo()
    return out


def ids(out: Path) -> list[str]:
    return [
        json.loads(line)["trial_id"] for line in (out / "trials.jsonl").read_text().splitlines()
    ]


def error_of(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# sweep


def test_sweep_from_a_toml_file_writes_the_results(swept):
    df = load_results(swept)
    assert len(df) == N_TRIALS == len(set(df.trial_id))
    spec = SweepSpec.from_dict(json.loads((swept / "spec.json").read_text())["spec"])
    assert spec.concepts == ("Dust", "Peace") and spec.max_new_tokens == 3
    assert set(df.protocol) == {"detection", "forced"}
    assert df.b.notna().all()  # readouts recorded


def test_rerunning_the_same_command_resumes_without_duplicates(swept, llama, config, capsys):
    before = ids(swept)
    lines = (swept / "trials.jsonl").read_text().splitlines(keepends=True)
    # a run that died after its first batch, mid-write of the second
    (swept / "trials.jsonl").write_text("".join(lines[:8]) + lines[8][:20])
    argv = ["sweep", "--config", str(config), "--model", llama, "--out", str(swept)]
    assert main(argv) == 0
    assert sorted(ids(swept)) == sorted(before)
    assert main(argv) == 0  # nothing left to run
    assert sorted(ids(swept)) == sorted(before)
    assert f"{N_TRIALS} of {N_TRIALS} trials" in capsys.readouterr().out
    assert main(["sweep", "--out", str(swept)]) == 0  # the folder's own spec and model
    assert sorted(ids(swept)) == sorted(before)


def test_flags_override_the_file(llama, config, tmp_path):
    out = tmp_path / "o"
    argv = ["sweep", "--config", str(config), "--model", llama, "--out", str(out)]
    argv += ["--max-new-tokens", "2", "--protocols", "detection", "--strengths", "8", "--seed", "5"]
    assert main(argv) == 0
    spec = json.loads((out / "spec.json").read_text())["spec"]
    assert spec["max_new_tokens"] == 2 and spec["protocols"] == ["detection"]
    assert spec["strengths"] == [8.0] and spec["seed"] == 5 and spec["n_controls"] == 2
    assert len(load_results(out)) == 2 * 2 + 2


def test_yaml_config_and_depths(llama, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"model: {llama}\nout: {tmp_path / 'y'}\ndepths: [0.5]\n"
        "spec:\n  concepts: [Dust]\n  strengths: [4]\n  max_new_tokens: 2\n"
    )
    assert main(["sweep", "--config", str(path)]) == 0
    spec = json.loads((tmp_path / "y" / "spec.json").read_text())["spec"]
    assert spec["layers"] == [2]  # round(0.5 * 4 blocks)


def test_a_bad_config_key_is_refused_naming_the_valid_fields(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('model = "m"\n[spec]\nconcept = ["Dust"]\nlayers = [1]\n')
    code, err = error_of(capsys, ["sweep", "--config", str(path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "unknown sweep spec fields ['concept']" in err and "valid fields are" in err
    assert "'concepts'" in err and "'max_new_tokens'" in err
    path.write_text('modle = "m"\nlayers = [1]\n[spec]\nconcepts = ["Dust"]\n')
    code, err = error_of(capsys, ["sweep", "--config", str(path)])
    assert code == 2 and "unknown keys ['layers', 'modle']" in err
    assert "valid top-level keys" in err and "'batch_size'" in err and "go in [spec]" in err
    assert not (tmp_path / "o").exists()


def test_config_errors_name_the_fix(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.toml"
    path.write_text('[spec]\nconcepts = ["Dust"]\n')
    code, err = error_of(capsys, ["sweep", "--config", str(path), "--out", str(tmp_path)])
    assert code == 2 and "give --layers" in err
    path.write_text('[spec]\nconcepts = ["Dust"]\nlayers = [1]\nmethod = "pca"\n')
    code, err = error_of(capsys, ["sweep", "--config", str(path), "--out", str(tmp_path)])
    assert code == 2 and "unknown vector method 'pca'" in err
    path.write_text("[spec\n")
    code, err = error_of(capsys, ["sweep", "--config", str(path)])
    assert code == 2 and "not valid TOML" in err
    yaml_path = tmp_path / "s.yaml"
    yaml_path.write_text("spec: {}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    code, err = error_of(capsys, ["sweep", "--config", str(yaml_path)])
    assert code == 2 and "pip install pyyaml" in err
    code, err = error_of(capsys, ["sweep", "--config", str(tmp_path / "s.json")])
    assert code == 2 and ".toml" in err
    code, err = error_of(capsys, ["report", str(tmp_path / "nowhere")])
    assert code == 1 and "not a results folder" in err


# ---------------------------------------------------------------------------------------------
# help


COMMANDS = ["extract", "sweep", "grade", "report", "noise", "patch", "demo", "run", "viewer"]


@pytest.mark.parametrize("command", [*COMMANDS, "organism"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mechintro {command}") and "example" in out


def test_sweep_help_teaches_the_config_and_resuming(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    for flag in ("--concepts", "--layers", "--n-controls", "--readout", "--batch-size"):
        assert flag in out  # SweepSpec and RunConfig fields
    assert "resum" in out.lower() and "[spec]" in out
    assert "0 = control" in out  # the field's documented meaning, from SweepSpec's docstring


def test_top_level_help_lists_each_command_on_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        (line,) = [x for x in out.splitlines() if x.strip().startswith(command + " ")]
        assert len(line.split(command, 1)[1].strip()) > 10


# ---------------------------------------------------------------------------------------------
# extract, grade, report


def test_extract_caches_vectors(llama, tmp_path, capsys):
    out = tmp_path / "vecs"
    argv = ["extract", "--model", llama, "--layer", "1", "--words", "Dust", "Peace"]
    assert main([*argv, "--out", str(out)]) == 0
    assert any(out.glob("*.safetensors"))
    text = capsys.readouterr().out
    assert "2 lindsey vectors at layer 1" in text and "Peace" in text
    code, err = error_of(capsys, ["extract", "--model", llama, "--words", "x", "--out", "o"])
    assert code == 2 and "--layer L or --depth" in err


def test_extract_takes_a_baseline(llama, tmp_path, capsys):
    out = tmp_path / "vecs"
    argv = ["extract", "--model", llama, "--layer", "1", "--words", "Dust", "Peace",
            "--baseline", "Bread", "Milk", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "baseline: 2 words (Bread, Milk)" in capsys.readouterr().out
    side = json.loads(next(out.glob("*.json")).read_text())
    assert side["spec"]["baseline"] == ["Bread", "Milk"] and side["words"] == ["Dust", "Peace"]


def test_extract_refuses_words_the_organism_does_not_know(tmp_path, capsys):
    argv = ["extract", "--model", "builtin:organism", "--layer", "3", "--out", str(tmp_path)]
    code, err = error_of(capsys, [*argv, "--words", "Dust", "horse"])
    assert code == 1 and "does not know the words ['Dust']" in err and "on_bad_word" in err
    assert main([*argv, "--words", "Dust", "horse", "--on-bad-word", "warn"]) == 0
    text = capsys.readouterr().out
    assert "baseline: 16 words (table, chair, door, window, cup, lamp, book, pencil, ...)" in text
    assert "! the tokenizer does not know the words ['Dust']" in text
    with pytest.raises(SystemExit):
        main([*argv, "--words", "horse", "--on-bad-word", "skip"])
    assert "--on-bad-word: invalid choice: 'skip'" in capsys.readouterr().err


def test_grade_rule_is_append_only_and_resumable(swept, capsys):
    assert main(["grade", str(swept)]) == 0
    lines = (swept / GRADES_FILE).read_text().splitlines()
    records = [json.loads(x) for x in lines]
    df = load_results(swept)
    detection = df[df.protocol == "detection"]
    forced = df[(df.protocol == "forced") & df.injected]
    by_rubric = {r: {x["trial_id"] for x in records if x["rubric"] == r} for r in
                 ("detection", "forced_identification")}  # fmt: skip
    assert by_rubric["detection"] == set(detection.trial_id)
    assert by_rubric["forced_identification"] == set(forced.trial_id)
    assert all(r["grader"] == "rule" and r["label"] in ("YES", "NO") for r in records)
    assert main(["grade", str(swept)]) == 0
    assert (swept / GRADES_FILE).read_text().splitlines() == lines
    assert "0 new grades by rule" in capsys.readouterr().out


class FlakyJudge:
    """Fails every call until ``works`` is set, then answers YES."""

    judge_id = "fake:flaky"

    def __init__(self) -> None:
        self.works = False
        self.calls = 0

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        if not self.works:
            raise ConnectionError("judge down")
        return "It does.\nAnswer: YES"


def test_judge_failure_is_an_error_never_a_no_and_is_retried(swept, monkeypatch, capsys):
    judge = FlakyJudge()
    monkeypatch.setitem(cli.JUDGE_CLIENTS, "fake", lambda name, cfg: judge)
    argv = ["grade", str(swept), "--grader", "judge", "--judge", "fake:flaky", "--attempts", "1"]
    assert main(argv) == 0
    assert "ERROR grades: run the same command again" in capsys.readouterr().out
    grades = load_grades(swept)
    mine = grades[grades.grader == "judge:fake:flaky"]
    assert len(mine) and set(mine.label) == {"ERROR"}
    assert mine.detail.str.contains("ConnectionError").all()
    # the report leaves errors out and says so
    page = tmp_page(swept, "judge:fake:flaky")
    assert "ERROR (a judge failure)" in page
    judge.works = True
    assert main(argv) == 0
    mine = load_grades(swept).query("grader == 'judge:fake:flaky'")
    assert "ERROR" not in set(mine.label) and "YES" in set(mine.label)
    assert "identification" in set(mine.rubric)  # graded once detection was YES
    assert (swept / "judge_cache.jsonl").exists()
    code, err = error_of(capsys, ["grade", str(swept), "--grader", "judge", "--judge", "x"])
    assert code == 2 and "PROVIDER:MODEL" in err


def tmp_page(results: Path, grader: str) -> str:
    out = results.parent / f"report-{grader.replace(':', '_')}.html"
    assert main(["report", str(results), "--grader", grader, "--out", str(out)]) == 0
    return out.read_text("utf-8")


def test_report_is_one_self_contained_html_with_tables_and_figures(swept, capsys):
    from plotly.offline import get_plotlyjs

    assert main(["grade", str(swept)]) == 0
    assert main(["report", str(swept), "--grader", "rule"]) == 0
    page = (swept / "report.html").read_text("utf-8")
    assert f"wrote {swept / 'report.html'}" in capsys.readouterr().out
    assert "<script src" not in page.lower() and page.count(get_plotlyjs()[:200]) == 1
    assert "<th>TPR</th>" in page and "<th>FPR</th>" in page
    assert "<th>forced identification</th>" in page and "<th>n_tpr</th>" in page
    assert f"{N_TRIALS} of {N_TRIALS} planned trials" in page
    assert page.count('class="plotly-graph-div"') >= 6  # heatmaps, curves, bars, b, examples
    assert "Grades by rule" in page and "Control comparison" in page
    code, err = error_of(capsys, ["report", str(swept), "--grader", "nobody"])
    assert code == 1 and "no grades by 'nobody'" in err


def test_report_without_grades_grades_on_the_fly(llama, config, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["sweep", "--config", str(config), "--model", llama, "--out", str(out)]
    assert main([*argv, "--protocols", "detection", "--strengths", "8"]) == 0
    html = tmp_path / "page.html"
    assert main(["report", str(out), "--out", str(html), "--title", "T <x>"]) == 0
    page = html.read_text("utf-8")
    assert "graded on the fly by the rule grader" in page and "T &lt;x&gt;" in page
    assert not (out / GRADES_FILE).exists()


@pytest.mark.parametrize("name", ["smollm2.toml", "organism.toml"])
def test_example_configs_are_valid(name):
    path = Path(__file__).parents[2] / "examples" / name
    run, spec_data, _ = cli.sweep_settings({"config": str(path)})
    spec = SweepSpec.from_dict(spec_data)
    assert run.model and spec.n_controls > 0 and spec.readout
    if name == "smollm2.toml":
        assert run.model == "builtin:smollm2" and spec.max_new_tokens <= 40
        assert len(spec) <= 64  # minutes on a 2-core CPU
    else:
        from mechintro.models import builtin_path

        assert run.model == "builtin:organism"
        folder = builtin_path("organism")
        concepts = json.loads((folder / "concepts.json").read_text())
        held = {c["word"] for c in concepts if c["split"] == "heldout"}
        objects = {c["word"] for c in concepts if c["split"] == "baseline"}
        assert set(spec.concepts) <= held  # generalisation: never injected in training
        assert set(spec.baseline) == objects  # words the organism knows, as its trainer used
        assert spec.temperature > 0  # controls of one trial number differ only when sampled


def test_report_rates_several_protocols_apart(llama, config, tmp_path):
    out = tmp_path / "p"
    argv = ["sweep", "--config", str(config), "--model", llama, "--out", str(out)]
    argv += ["--protocols", "detection", "skeptical", "--strengths", "8", "--trial-numbers", "1"]
    assert main(argv) == 0
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text("utf-8")
    assert "<th>protocol</th>" in page
    assert "detection: TPR" in page and "skeptical: TPR" in page  # figure titles per protocol


def test_grade_and_report_an_intention_sweep(llama, config, tmp_path, monkeypatch, capsys):
    """Lindsey's prefill intention run by a sweep: `grade` classifies every reply with
    classify_reply (whichever grader, no judge call), `report` shows the rates per condition."""
    from mechintro.experiments.protocols import get
    from mechintro.experiments.protocols.intention import CLASSIFIER_VERSION, classify_reply

    out = tmp_path / "intention"
    argv = ["sweep", "--config", str(config), "--model", llama, "--out", str(out)]
    argv += ["--protocols", "intention", "--modes", "span", "--start", "context"]
    assert main(argv) == 0
    trials = load_results(out)
    assert len(trials) == 2 * 2 * 2 + 2 and set(trials.protocol) == {"intention"}
    assert main(["grade", str(out)]) == 0
    assert f"{len(trials)} new grades by rule" in capsys.readouterr().out
    grades = load_grades(out)
    assert set(grades.rubric) == {"intention"} and set(grades.trial_id) == set(trials.trial_id)
    assert (grades.version == CLASSIFIER_VERSION).all() and (grades.grader == "rule").all()
    cut = {t: get("intention").cut(r) for t, r in zip(trials.trial_id, trials.reply)}
    assert all(lab == classify_reply(cut[t]) for t, lab in zip(grades.trial_id, grades.label))
    assert main(["grade", str(out)]) == 0
    assert "0 new grades by rule" in capsys.readouterr().out
    # a judge grader does not judge them: the rule classifies, under the judge's name
    judge = FlakyJudge()
    monkeypatch.setitem(cli.JUDGE_CLIENTS, "fake", lambda name, cfg: judge)
    assert main(["grade", str(out), "--grader", "judge", "--judge", "fake:flaky"]) == 0
    mine = load_grades(out).query("grader == 'judge:fake:flaky'")
    assert judge.calls == 0 and len(mine) == len(trials) and "ERROR" not in set(mine.label)
    assert main(["report", str(out), "--grader", "rule"]) == 0
    page = (out / "report.html").read_text("utf-8")
    assert "Prefill intention" in page and "Grades by rule" in page
    assert "<th>condition</th>" in page and "<th>apology</th>" in page
    assert "<td>uninjected</td>" in page and "<td>word</td>" in page
    # each uninjected control prefills its trial's own word: it differs from it only by the
    # injection (Lindsey's control), so each word has its own uninjected row
    for word in ("Dust", "Peace"):
        assert f"<tr><td>{word}</td><td>uninjected</td>" in page
    assert "No unrelated-concept control in these trials" in page
    assert "Detection and identification" not in page  # nothing of the kind to rate


def test_noise_command_runs_godets_design(llama, tmp_path, capsys):
    """Godet's choices: a depth is int(n·f) (0.7 of 4 blocks: block 2, where rounding gives
    3), the one control question by id, the 11 strengths 0..10 by default, the top token."""
    import pandas as pd

    out = tmp_path / "noise"
    argv = ["noise", "--model", llama, "--depths", "0.7", "--concepts", "Dust",
            "--baseline", "Bread", "Milk", "--controls", "one_plus_one_is_three",
            "--n-random", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = pd.read_csv(out / "noise.csv")
    assert set(table.layer) == {2} and sorted(set(table.question)) == [
        "introspection",
        "one_plus_one_is_three",
    ]
    assert sorted(set(table.strength)) == [float(s) for s in range(11)]
    assert table.top_token.notna().all()
    assert "nan" not in capsys.readouterr().out.lower()  # no empty spread columns printed
    assert main([*argv[:-2], "--controls", "nope", "--out", str(out)]) == 2


def test_noise_command_feeds_the_report(llama, swept, tmp_path):
    """`mechintro noise` writes Godet's readouts next to a sweep; the report then shows the
    control side and the specificity, which it computes from that table."""
    import shutil

    import pandas as pd

    from mechintro.experiments.metrics import specificity

    out = tmp_path / "results"
    shutil.copytree(swept, out)
    argv = ["noise", "--model", llama, "--layers", "1", "--strengths", "0", "4",
            "--concepts", "Dust", "--baseline", "Bread", "Milk", "--battery", "3",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = pd.read_csv(out / "noise.csv")
    # introspection + 3 controls, 2 strengths, the concept and one random vector
    assert len(table) == 4 * 2 * 2
    assert set(table.kind) == {"concept", "random"}
    assert (table[table.strength == 0].delta_b == 0).all()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text("utf-8")
    concept = table[(table.kind == "concept") & (table.strength == 4)]
    want = specificity(concept, by=("layer", "strength")).specificity.iloc[0]
    assert "Noise controls" in page and f"{want:.4g}"[:4] in page


def test_patch_command_writes_resumes_and_refuses_other_settings(llama, tmp_path, monkeypatch):
    import pandas as pd
    import torch

    from mechintro.analysis.patching import knock_out
    from mechintro.experiments.protocols import PROTOCOLS
    from mechintro.prompts import encode
    from mechintro.vectors import extract_vectors

    out = tmp_path / "patch"
    argv = ["patch", "--model", llama, "--out", str(out), "--concept", "Dust", "--layer", "1",
            "--baseline", "Bread", "Milk", "--components", "resid_post", "mlp_out",
            "--positions", "all", "--strength", "6"]  # fmt: skip
    assert main(argv) == 0
    frame = pd.read_csv(out / "patch_mlp_out.csv")
    model = _cached_load(llama, "bridge", "float32", "cpu")
    vec = extract_vectors(model, ["Dust"], layer=1, baseline=["Bread", "Milk"])["Dust"]
    batch = encode(model.tokenizer, [PROTOCOLS["detection"].prompt(1, concept="Dust")])
    inj = PROTOCOLS["detection"].injection(1, vec.vector, 6.0)
    want = knock_out(model, batch, inj, component="mlp_out", positions="all",
                     layers=range(2, model.cfg.n_layers))  # fmt: skip
    torch.testing.assert_close(
        torch.tensor(frame.effect.to_numpy()), want.effect.flatten().double(), atol=1e-4, rtol=0
    )
    assert (out / "patch.html").is_file()

    def no_patching(*a, **k):
        raise AssertionError("a finished component was patched again")

    monkeypatch.setattr("mechintro.analysis.patching.knock_out", no_patching)
    assert main(argv) == 0  # resumed: both components were already written
    assert main([*argv[:-1], "8"]) != 0  # another strength in the same folder: refused


def test_grade_takes_the_judges_rubrics_from_a_prompt_pack(swept, tmp_path, monkeypatch, capsys):
    pack = tmp_path / "pack.toml"
    pack.write_text(
        'name = "mine"\nversion = "1"\n\n[rubrics.detection]\nversion = "mine-1"\n'
        'template = "MY RUBRIC. Reply: {reply}"\n'
    )
    seen: list[str] = []

    class Recording(FlakyJudge):
        judge_id = "fake:recording"

        def __call__(self, prompt: str) -> str:
            seen.append(prompt)
            return "Answer: NO"

    monkeypatch.setitem(cli.JUDGE_CLIENTS, "fake", lambda name, cfg: Recording())
    argv = ["grade", str(swept), "--grader", "judge", "--judge", "fake:recording"]
    assert main([*argv, "--rubrics", str(pack)]) == 0
    mine = load_grades(swept).query("grader == 'judge:fake:recording'")
    detection = mine[mine.rubric == "detection"]
    assert len(detection) and set(detection.version) == {"mine-1"}
    # the judge saw the pack's rubric (one call per distinct reply: the cache takes repeats)
    assert 1 <= sum(p.startswith("MY RUBRIC. Reply: ") for p in seen) <= len(detection)
    code, err = error_of(capsys, ["grade", str(swept), "--rubrics", str(pack)])
    assert code == 2 and "--grader judge" in err
