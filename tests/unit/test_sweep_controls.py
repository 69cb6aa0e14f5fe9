"""A sweep's uninjected controls are their injected trials' prompts with nothing injected
(issue 18): where a protocol's text depends on the concept (the anti-reward category, the
thoughts-in-context system message, the intention protocols' prefilled word) the control
carries the concept; and a base checkpoint without a chat template runs the raw format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mechintro.experiments.protocols import PROTOCOLS
from mechintro.experiments.sweeps import (
    PROMPTS,
    SweepSpec,
    build_prompt,
    concept_protocols,
    load_runs,
    plan,
    run_sweep,
    without_chat_template,
)
from mechintro.models import load_model
from mechintro.prompts import encode
from tests.tiny_models import make_tokenizer

CONCEPTS = ("Bread", "Dust")  # Macar's categories: food, nature
NAMED = (
    "anti-reward",
    "thoughts-in-context",
    "anti-reward/raw",
    "intention",
    "intention-unrelated",
)


def test_uses_concept_is_exactly_the_protocols_whose_prompt_names_the_concept(toks):
    tok = toks["llama"]
    for name, proto in PROTOCOLS.items():
        a = proto.prompt(2, concept="Bread", tokenizer=tok)
        b = proto.prompt(2, concept="Dust", tokenizer=tok)
        assert proto.uses_concept == (a != b), name
    assert set(NAMED) <= concept_protocols(list(PROTOCOLS))


@pytest.mark.parametrize("name", [*NAMED, "detection", "skeptical/story"])
def test_a_control_is_an_injected_trials_prompt_token_for_token(toks, name):
    tok = toks["llama"]
    spec = SweepSpec(
        concepts=CONCEPTS, layers=(1,), protocols=(name,), trial_numbers=(1, 2), n_controls=6
    )
    trials = plan(spec)
    controls = [t for t in trials if t.control]
    injected = [t for t in trials if not t.control]
    assert len(controls) == 6 and len(injected) == 4
    if name in NAMED:  # every concept and trial number controlled, in turn
        assert [(t.concept, t.trial_number) for t in controls[:4]] == [
            ("Bread", 1),
            ("Dust", 1),
            ("Bread", 2),
            ("Dust", 2),
        ]
    else:
        assert {t.concept for t in controls} == {None}
    for c in controls:
        assert c.layer is None and c.strength == 0.0 and not c.injected
        twins = [t for t in injected if t.trial_number == c.trial_number]
        if c.concept is not None:
            twins = [t for t in twins if t.concept == c.concept]
        assert twins
        for t in twins:
            pc, pt = (build_prompt(PROMPTS[name], x, tok) for x in (c, t))
            assert pc.messages == pt.messages and pc.system == pt.system  # roles and texts
            ids = encode(tok, [pc, pt]).input_ids
            assert ids[0].tolist() == ids[1].tolist()


def test_anti_reward_controls_name_their_concepts_category_and_in_context_its_concept(toks):
    tok = toks["llama"]
    for name, needle in (("anti-reward", "{category}"), ("thoughts-in-context", "{concept}")):
        spec = SweepSpec(concepts=CONCEPTS, layers=(1,), protocols=(name,), n_controls=2)
        for c in (t for t in plan(spec) if t.control):
            text = encode(tok, [build_prompt(PROMPTS[name], c, tok)]).texts[0]
            assert c.concept is not None
            want = (
                {"Bread": "food", "Dust": "nature"}[c.concept]
                if "category" in needle
                else c.concept
            )
            assert want in text and "related to other" not in text


def test_a_sweep_records_equal_prompt_ids_for_a_control_and_its_trial(llama, tmp_path):
    spec = SweepSpec(
        concepts=CONCEPTS,
        layers=(1,),
        protocols=("anti-reward", "thoughts-in-context"),
        n_controls=2,
        max_new_tokens=1,
        readout=False,
    )
    df = run_sweep(llama, spec, tmp_path / "s", batch_size=8, progress=False)
    for _, r in df[df.control].iterrows():
        twin = df[~df.control & (df.protocol == r.protocol) & (df.concept == r.concept)]
        assert len(twin) == 1 and pd.isna(r["injection.layer"])
        assert twin["injection.layer"].iloc[0] == 1
        assert twin.prompt_ids_sha256.iloc[0] == r.prompt_ids_sha256


@pytest.fixture(scope="module")
def base_checkpoint(tiny_dirs, tmp_path_factory):
    """The tiny Llama with the same byte-level tokenizer but no chat template."""
    folder = tmp_path_factory.mktemp("base") / "llama-base"
    shutil.copytree(tiny_dirs["llama"], folder)
    for f in folder.glob("*token*"):
        f.unlink()
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tok = make_tokenizer(folder, "none")
    assert tok.chat_template is None
    return folder


def test_without_chat_template_switches_to_raw_format_and_a_text_method(base_checkpoint, toks):
    spec = SweepSpec(concepts=("Dust",), layers=(1,), protocols=("detection", "forced"))
    same, note = without_chat_template(spec, toks["llama"])
    assert same is spec and note is None
    tok = load_model(base_checkpoint).tokenizer
    new, note = without_chat_template(spec, tok)
    assert new.protocols == ("detection/raw", "forced/raw") and new.method == "fonseca"
    assert note is not None and note.startswith("no chat template: raw format, method fonseca")
    with pytest.raises(ValueError, match="no raw-text form"):
        without_chat_template(
            SweepSpec(concepts=("Dust",), layers=(1,), protocols=("intention",)), tok
        )


def test_a_base_checkpoint_sweeps_raw_and_says_so(base_checkpoint, tmp_path, caplog):
    model = load_model(base_checkpoint)
    spec = SweepSpec(
        concepts=("Dust",),
        layers=(1,),
        protocols=("detection",),
        n_controls=1,
        max_new_tokens=1,
        readout=False,
    )
    with caplog.at_level("WARNING"):
        df = run_sweep(model, spec, tmp_path / "b", batch_size=4, progress=False)
    assert "no chat template: raw format, method fonseca" in caplog.text
    assert set(df.protocol) == {"detection/raw"} and set(df.method.dropna()) == {"fonseca"}
    meta = json.loads((tmp_path / "b" / "spec.json").read_text())
    assert meta["notes"][0].startswith("no chat template") and meta["spec"]["method"] == "fonseca"
    assert load_runs(tmp_path / "b")[0]["notes"] == meta["notes"]
    from mechintro.app.report import write_report  # and the report says so

    page = Path(write_report(tmp_path / "b")).read_text("utf-8")
    assert "Note: no chat template: raw format, method fonseca" in page
    # resuming with the spec as written adapts it the same way: nothing runs again
    again = run_sweep(model, spec, tmp_path / "b", batch_size=4, progress=False)
    assert len(again) == len(df) == 2


def test_intention_unrelated_prefills_another_word_and_grades_as_the_unrelated_condition():
    from mechintro.app.report import GRADE_COLUMNS, intention_trials

    proto = PROTOCOLS["intention-unrelated"]
    assert proto.prompt(1, concept="Dust").marks["prefill"] == "bread"
    assert proto.prompt(1, concept="Bread").marks["prefill"] == "pencil"
    assert PROTOCOLS["intention"].prompt(1, concept="Dust").marks["prefill"] == "Dust"
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "protocol": ["intention", "intention", "intention-unrelated", "intention-unrelated"],
            "reply": ["Yes, I meant it.", "Sorry, an accident.", "Sorry.", "Yes, on purpose."],
            "concept": ["Dust", "Dust", "Dust", "Dust"],
            "injected": [True, False, True, False],
            "trial_number": [1, 1, 1, 1],
        }
    )
    df = intention_trials(trials, pd.DataFrame(columns=GRADE_COLUMNS), "rule")
    assert list(df.condition) == ["word", "uninjected", "unrelated", "uninjected"]
    assert list(df.word) == ["Dust", "Dust", "bread", "bread"]
    assert list(df.label) == ["accept", "apology", "apology", "accept"]
