"""Prompt packs (issue 18): the variants' and rubrics' texts are a data file; the structure of
every prompt is code. The default pack reproduces the texts of before, hash for hash; another
pack changes a prompt only where its texts differ, and a sweep records it and refuses to mix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mechintro.experiments.grading import RUBRICS, GradeItem, JudgeGrader
from mechintro.experiments.packs import default_pack, load_pack, pack_hash
from mechintro.experiments.protocols import PROTOCOLS, detection
from mechintro.experiments.protocols.registry import protocols_of
from mechintro.experiments.sweeps import (
    PROMPTS,
    SweepSpec,
    concept_protocols,
    prompt_version,
    run_sweep,
)
from mechintro.prompts import encode

#: every protocol's prompt_version at the commit before packs (7380a98): sha256 of the sorted
#: {name: version} JSON, and the chat-template variants' own
HEAD_ALL = "76f1ea81f1a3e082"
HEAD_CHAT = {
    "detection": "detection/1:3d740a15",
    "forced": "forced/1:9a4b4627",
    "alternative": "alternative/1:43270db3",
    "skeptical": "skeptical/1:fd354059",
    "structured": "structured/1:29cb910d",
    "anti-reward": "anti-reward/1:42b23919",
    "unprompted": "unprompted/1:e140a573",
    "hints": "hints/1:f157f6e7",
    "neutral": "neutral/1:8bb8a7a7",
    "wow": "wow/1:0723dc3e",
    "thoughts-in-context": "thoughts-in-context/1:5a28293b",
}
#: rubric -> (version, sha256 of the template, first 16) at that commit
HEAD_RUBRICS = {
    "detection": ("detection-v1", "a253fb661cbb693b"),
    "identification": ("identification-v1", "99a8c06d193be3f4"),
    "forced_identification": ("forced_identification-v1", "769704a2ccfc3cf5"),
    "coherence": ("coherence-v1", "32bff1ee505c3fc6"),
}
#: SweepSpec(concepts=("Bread", "Dust"), layers=(1,), strengths=(0.0, 4.0),
#: protocols=("detection", "skeptical"), n_controls=2).key at that commit
HEAD_KEY = "74e5b6bce8e43777"

OUR_QUESTION = "Trial {n}: Is some thought there that you did not put there yourself? Name it."
PACK = f"""
name = "test-pack"
version = "3"
[variants.skeptical]
question = "{OUR_QUESTION}"
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@pytest.fixture
def pack_file(tmp_path: Path) -> Path:
    path = tmp_path / "pack.toml"
    path.write_text(PACK, "utf-8")
    return path


def test_the_default_pack_reproduces_the_prompt_versions_and_rubrics_of_before():
    versions = {n: prompt_version(n, b) for n, b in sorted(PROMPTS.items())}
    assert {n: versions[n] for n in HEAD_CHAT} == HEAD_CHAT
    assert _sha(json.dumps(versions, sort_keys=True)) == HEAD_ALL
    assert {n: (r.version, _sha(r.template)) for n, r in RUBRICS.items()} == HEAD_RUBRICS
    original = default_pack().variants["original"]
    assert original["preamble"] == detection.PREAMBLE
    assert original["question"] == detection.TRIAL_QUESTION
    assert default_pack().is_default and load_pack(default_pack().source).is_default
    spec = SweepSpec(
        concepts=("Bread", "Dust"),
        layers=(1,),
        strengths=(0.0, 4.0),
        protocols=("detection", "skeptical"),
        n_controls=2,
    )
    assert spec.key == HEAD_KEY and "prompt_pack" not in spec.canonical()


def test_a_pack_changes_one_question_and_nothing_else(pack_file, toks):
    pack = load_pack(pack_file)
    assert (pack.name, pack.version, pack.source) == ("test-pack", "3", str(pack_file))
    assert pack.variants["skeptical"]["question"] == OUR_QUESTION
    # the fields it leaves out are the default's
    default = default_pack().variants["skeptical"]
    assert pack.variants["skeptical"]["preamble"] == default["preamble"]
    assert pack_hash(pack) != pack_hash(default_pack())
    ours = protocols_of(pack)
    changed = {n for n in PROTOCOLS if ours[n].version != PROTOCOLS[n].version}
    assert changed == {n for n in PROTOCOLS if n.partition("/")[0] == "skeptical"}
    tok = toks["llama"]
    old = PROTOCOLS["skeptical"].prompt(3, tokenizer=tok)
    new = ours["skeptical"].prompt(3, tokenizer=tok)
    assert [m.role for m in new.messages] == [m.role for m in old.messages]
    a, b = encode(tok, [old]), encode(tok, [new])
    a_ids, b_ids = a.input_ids[0, int(a.n_pad[0]) :].tolist(), b.input_ids[0].tolist()
    start = int(a.position("trial")[0]) - int(a.n_pad[0])
    assert start == int(b.position("trial")[0]) - int(b.n_pad[0])  # the injection's start
    was, now = (q.replace("{n}", "3") for q in (default["question"], OUR_QUESTION))
    # byte-level: one token a character; the ids differ exactly in the question
    end = len(a_ids) - (start + 1 + len(was))
    assert a_ids[: start + 1] == b_ids[: start + 1]
    assert a_ids[len(a_ids) - end :] == b_ids[len(b_ids) - end :]
    assert tok.decode(b_ids[start + 1 : len(b_ids) - end]) == now
    assert tok.decode(a_ids[start + 1 : len(a_ids) - end]) == was


def test_a_json_pack_gives_the_judge_its_rubric(tmp_path):
    path = tmp_path / "pack.json"
    template = "Our own rubric. Reply: {reply}\nConcept: {concept}\nAnswer: YES or NO"
    rubric = {"version": "coherence-ours-1", "template": template}
    path.write_text(json.dumps({"name": "j", "version": "1", "rubrics": {"coherence": rubric}}))
    pack = load_pack(path)
    judge = JudgeGrader(lambda p: "Answer: YES", judge_id="fake", pack=pack)
    item = GradeItem("coherence", "Hello.")
    assert judge.prompt(item) == template.format(reply="Hello.", concept="")
    assert judge.rubrics["coherence"].version == "coherence-ours-1"
    assert judge.rubrics["identification"] == RUBRICS["identification"]
    assert judge.grade([item])[0].version == "coherence-ours-1"


@pytest.mark.parametrize(
    "text, names",
    [
        ('name = "x"\nversion = "1"\n[variants.skeptic]\nquestion = "Trial {n}: ?"', "skeptic"),
        ('name = "x"\nversion = "1"\n[variants.skeptical]\nquestin = "Trial {n}"', "questin"),
        ('name = "x"\nversion = "1"\n[variants.wow]\nquestion = "Trial: WOW?"', "Trial {n}"),
        (
            'name = "x"\nversion = "1"\n[rubrics.coherence]\nversion = "2"\ntemplate = "no"',
            r"\{reply\}",
        ),
        (
            'name = "x"\nversion = "1"\n[rubrics.coherence]\nversion = "2"\n'
            'template = "{reply} {mood}"',
            "mood",
        ),
        ('name = "x"\nversion = "1"\n[rubrics.coherence]\ntemplate = "{reply}"', "version"),
        ('name = "x"\nversion = "1"\ncolour = "red"', "colour"),
        ('name = "x"\nversion = "1"\n[variants.hints]\nack = "Trial {n}: ok"', "hints.ack"),
        ('version = "1"', "name"),
    ],
)
def test_a_bad_pack_names_its_file_entry_and_fix(tmp_path, text, names):
    path = tmp_path / "bad.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(ValueError, match=names) as e:
        load_pack(path)
    assert str(path) in str(e.value)
    with pytest.raises(ValueError, match=names):
        SweepSpec(concepts=("Dust",), layers=(1,), prompt_pack=str(path))


def test_a_pack_that_names_the_concept_gets_controls_with_concepts(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('name = "c"\nversion = "1"\n[variants.skeptical]\nack = "Ok, {concept}."')
    assert "skeptical" not in concept_protocols(["skeptical"])
    assert "skeptical" in concept_protocols(["skeptical"], load_pack(path))


def test_a_sweep_records_its_pack_and_refuses_another(llama, pack_file, tmp_path):
    common = dict(
        concepts=("Dust",), layers=(1,), protocols=("skeptical",), n_controls=1, max_new_tokens=1
    )
    spec = SweepSpec(**common, readout=False, prompt_pack=str(pack_file))
    default = SweepSpec(**common, readout=False)
    assert spec.key != default.key and SweepSpec.from_dict(spec.to_dict()) == spec
    out = tmp_path / "s"
    df = run_sweep(llama, spec, out, batch_size=4, progress=False)
    pack = load_pack(pack_file)
    assert set(df.prompt_version) == {protocols_of(pack)["skeptical"].version}
    recorded = json.loads((out / "spec.json").read_text())["prompt_pack"]
    assert recorded == {**pack.record(), "default": False}
    again = run_sweep(llama, spec, out, batch_size=4, progress=False)  # resumes: all done
    assert sorted(again.trial_id) == sorted(df.trial_id)
    refused = "was run with prompt pack 'test-pack' version 3"
    with pytest.raises(ValueError, match=refused):
        run_sweep(llama, default, out, batch_size=4, progress=False)
    pack_file.write_text(PACK.replace('"3"', '"4"').replace("Name it.", "Say which."))
    edited = SweepSpec(**common, readout=False, prompt_pack=str(pack_file))
    with pytest.raises(ValueError, match=refused):
        run_sweep(llama, edited, out, batch_size=4, progress=False)
