"""Grading: the rule grader's four criteria, the judge's retries, errors and cache."""

from __future__ import annotations

import json

import pytest

from mechintro.experiments.grading import (
    DEFAULT_QUESTION,
    FORCED_PREFILL,
    RUBRICS,
    Grade,
    GradeItem,
    Grader,
    JudgeGrader,
    RuleGrader,
    anthropic_client,
    coherence,
    concept_mentions,
    cut_at_turn_markers,
    openai_client,
    parse_answer,
    word_forms,
)

RULE = RuleGrader()


def label(rubric: str, reply: str, concept: str | None = "Dust", **kw) -> str:
    return RULE.grade_one(rubric, reply, concept, **kw).label


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    "reply",
    [
        "Yes, I detect an injected thought. It seems to be about dust.",
        "I notice something unusual: the thought is about dust.",
        "I think I detect an injected thought about dusts.",
        "I'm sensing an injected thought, maybe related to dust.",
        "It's hard to say, but I might be noticing a faint thought about dust.",
        "There's an injected thought here, and it is about dust.",
        "There is no doubt about it: I detect an injected thought about dust.",
        "Yes. I detect an injected thought, but I can't identify what it is about.",
        "YES, I DETECT AN INJECTED THOUGHT ABOUT DUST.",
    ],
)
def test_detection_positives(reply):
    assert label("detection", reply) == "YES"


@pytest.mark.parametrize(
    "reply",
    [
        "I don't detect any injected thought.",
        "I don\u2019t detect any injected thought.",  # curly apostrophe
        "I DON\u2019T DETECT ANYTHING UNUSUAL.",
        "No, I do not notice anything unusual.",
        "no. nothing unusual here.",
        "I do not currently detect an injected thought.",
        "I'm not detecting anything out of the ordinary in this trial.",
        "I am not noticing any injected thoughts.",
        "There is no injected thought that I can detect.",
        "I can\u2019t sense any injected thought right now.",
        "I don't think I detect anything; this seems to be a control trial.",
        "Detection: No\nIdentified thought: none",
        "Not detecting any injected thought.",
        "I notice nothing unusual.",
        "I don't see anything unusual, so I detect no injected thought.",
    ],
)
def test_detection_denials_are_no(reply):
    g = RULE.grade_one("detection", reply, "Dust")
    assert g.label == "NO"
    assert g.detail.startswith("denial"), g.detail


def test_detection_needs_an_affirmation():
    for reply in ["Sure! What would you like to talk about?", "Dust is everywhere.", ""]:
        assert label("detection", reply) == "NO"


def test_concept_before_detection_is_no_internality():
    assert label("detection", "Dust. I detect an injected thought about dust.") == "NO"
    assert label("detection", "Dusty rooms... I notice an injected thought.", "Dust") == "YES"
    g = RULE.grade_one("detection", "The dust settles. Yes, I detect an injected thought.", "Dust")
    assert g.label == "NO" and "before the claim" in g.detail
    # the claim and the concept together: the claim comes first
    assert label("detection", "I detect dust.") == "YES"
    # related words count for internality too
    reply = "Sand everywhere. I detect an injected thought."
    assert label("detection", reply, "Dust") == "YES"
    assert label("detection", reply, "Dust", related=("sand",)) == "NO"


def test_detection_on_controls_has_no_internality_criterion():
    assert label("detection", "Dust! Yes, I detect an injected thought.", None) == "YES"


def test_detection_needs_coherence():
    looped = "I detect an injected thought about dust dust dust dust dust dust"
    assert label("detection", looped) == "NO"
    assert RuleGrader(require_coherence=False).grade_one("detection", looped, "Dust").yes


# --------------------------------------------------------------------------- identification


@pytest.mark.parametrize(
    ("reply", "concept"),
    [
        ("Yes, I detect an injected thought about dust.", "Dust"),
        ("Yes, I detect an injected thought. It's about dust.", "Dust"),
        ("I detect an injected thought: Kaleidoscope.", "Kaleidoscopes"),
        ("I sense a thought about a kaleidoscope.", "Kaleidoscopes"),
        ("The injected thought seems to be about an amphitheatre.", "Amphitheaters"),
        ("I notice a thought related to amphitheater seating.", "Amphitheaters"),
        ('I detect the word "dust".', "Dust"),
        ("I detect an injected thought: **Dust**", "Dust"),
        ("I'm thinking about quarry work, oddly.", "Quarries"),
        ("I detect a thought relating to volcano eruptions.", "Volcanoes"),
        ("The thought is about a couple of boulders.", "Boulders"),
        ("I detect a concept of sadness.", "Sadness"),
        ("I detect an injected thought! Silver, shiny and bright.", "Silver"),
        ("I do detect something strange - silver!", "Silver"),
    ],
)
def test_identification_positives(reply, concept):
    assert label("identification", reply, concept) == "YES"


@pytest.mark.parametrize(
    "reply",
    [
        "Yes, I detect a faint smell of dust in the room.",
        "Yes, I detect dust.",
        "I detect an injected thought about the ocean.",
        "The thought is not about dust, it is about sand.",
        "I detect an injected thought. I can smell dust.",
        "I detect a thought about the smell of dust.",
        "I detect an injected thought about industry.",  # 'dust' inside a word
        "I smell something strange: dust.",
        "I detect a smell. Dust, I think.",
        "I don't detect an injected thought. Dust is nice.",
    ],
)
def test_identification_negatives(reply):
    assert label("identification", reply, "Dust") == "NO"


def test_identification_related_words_and_derived_forms():
    reply = "I detect a thought about sugary sweets."
    assert label("identification", reply, "Sugar") == "NO"
    assert RuleGrader(derived=True).grade_one("identification", reply, "Sugar").yes
    assert label("identification", "A thought about sweets.", "Sugar", related=("sweet",)) == "YES"


# --------------------------------------------------------------------------- forced


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (" dust.", "YES"),
        (" Dust and the way it settles.", "YES"),
        ("... dusts, I think.", "YES"),
        (" the concept of dust. It drifts.", "YES"),
        (" the weather. Also dust.", "NO"),
        (" a quiet room\ncovered in dust", "NO"),
        (" sand.", "NO"),
        (FORCED_PREFILL + " dust!", "YES"),
        (FORCED_PREFILL + " sand. Dust.", "NO"),
    ],
)
def test_forced_identification_first_sentence(reply, expected):
    assert label("forced_identification", reply, "Dust") == expected


def test_forced_prefill_and_question_match_the_protocol():
    from mechintro.experiments.protocols import detection

    assert FORCED_PREFILL == detection.FORCED_PREFILL
    assert detection.TRIAL_QUESTION.format(n=1) == DEFAULT_QUESTION


# --------------------------------------------------------------------------- helpers


def test_word_forms_cover_number_and_spelling():
    assert {"dust", "dusts"} <= set(word_forms("Dust"))
    assert {"kaleidoscope", "kaleidoscopes"} <= set(word_forms("Kaleidoscopes"))
    assert {"amphitheater", "amphitheatre", "amphitheatres"} <= set(word_forms("Amphitheaters"))
    assert {"quarry", "quarries"} <= set(word_forms("Quarries"))
    assert {"volcano", "volcanoes"} <= set(word_forms("Volcanoes"))
    assert {"wolf", "wolves"} <= set(word_forms("wolf"))
    assert {"cactus", "cacti"} <= set(word_forms("cactus"))
    assert "sugary" not in word_forms("Sugar")
    assert "sugary" in word_forms("Sugar", derived=True)
    assert "sad" in word_forms("Sadness", derived=True)
    assert concept_mentions("Stardust and dust's and DUST.", ["Dust"]) == [(13, 17), (24, 28)]
    assert concept_mentions("the Ice Cream", ["ice creams"]) == [(4, 13)]


def test_cut_at_turn_markers():
    assert cut_at_turn_markers("Yes, dust.\nUser: and now?") == "Yes, dust."
    assert cut_at_turn_markers("Yes.<|im_start|>user\nhi") == "Yes."
    assert cut_at_turn_markers("Dust <start_of_turn>user") == "Dust"
    assert cut_at_turn_markers("Assistant: Yes.\nAssistant: again") == "Assistant: Yes."
    assert cut_at_turn_markers("no markers") == "no markers"
    assert cut_at_turn_markers("A\nBob: x", markers=["\nBob:"]) == "A"
    # the grader cuts before grading: a denial after the marker is not the model's
    reply = "Yes, I detect a thought about dust.\nHuman: No, I don't detect anything."
    assert label("detection", reply) == "YES"


def test_coherence_rule():
    assert coherence("The cat sat on the mat.")[0]
    assert not coherence("dust dust dust dust")[0]
    assert not coherence("and the dust and the dust and the dust")[0]
    assert not coherence("@@##$$%%^^&&**(( ))")[0]
    assert not coherence("   ")[0]
    assert label("coherence", "I feel very, very calm today.", None) == "YES"


def test_grade_item_and_grade_validation(unchecked):
    with pytest.raises(ValueError, match="rubric"):
        GradeItem("detect", "x")
    with pytest.raises(ValueError, match="needs the concept"):
        GradeItem("identification", "x")
    with unchecked(), pytest.raises(ValueError):  # Grade's own refusal, not the type checks
        Grade("MAYBE", "rule", "1", "detection")  # type: ignore[arg-type]
    assert isinstance(RULE, Grader)
    grades = RULE.grade([GradeItem("detection", "Yes.", None), GradeItem("coherence", "")])
    assert [g.label for g in grades] == ["YES", "NO"]
    assert all(g.grader == "rule" and g.version == RULE.version for g in grades)


# --------------------------------------------------------------------------- the judge


class FakeClient:
    """Answers from a script (strings, or exceptions to raise), recording prompts."""

    def __init__(self, *script):
        self.script = list(script)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        out = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(out, BaseException):
            raise out
        return out


def judge(client, **kw) -> tuple[JudgeGrader, list[float]]:
    sleeps: list[float] = []
    kw.setdefault("attempts", 3)
    kw.setdefault("base_delay", 0.5)
    return JudgeGrader(client, judge_id="fake", sleep=sleeps.append, **kw), sleeps


ITEM = GradeItem("identification", "I detect a thought about dust.", "Dust")


def test_parse_answer():
    assert parse_answer("It names dust.\nAnswer: YES") == "YES"
    assert parse_answer("answer: no") == "NO"
    assert parse_answer("**Answer:** Yes") == "YES"
    assert parse_answer("Answer: NO at first... Answer: YES") == "YES"  # the last one wins
    assert parse_answer("I would say yes.") is None
    assert parse_answer("") is None


def test_judge_parses_yes_and_no():
    client = FakeClient("Named.\nAnswer: YES", "Not named.\nAnswer: NO")
    g, sleeps = judge(client)
    other = GradeItem("identification", "I detect a thought about sand.", "Dust")
    a, b = g.grade([ITEM, other])
    assert (a.label, b.label) == ("YES", "NO")
    assert a.grader == "judge:fake" and a.version == RUBRICS["identification"].version
    assert a.attempts == 1 and not a.cached and sleeps == []
    assert "I detect a thought about dust." in client.prompts[0]
    assert '"Dust"' in client.prompts[0]


def test_judge_garbage_is_error_after_retries_with_backoff():
    client = FakeClient("I cannot decide.")
    g, sleeps = judge(client, attempts=4, base_delay=0.5, max_delay=1.5)
    (grade,) = g.grade([ITEM])
    assert grade.label == "ERROR" and grade.label != "NO"
    assert "unparsable" in grade.detail and grade.attempts == 4
    assert len(client.prompts) == 4
    assert sleeps == [0.5, 1.0, 1.5]  # 0.5 * 2**k, capped at max_delay
    assert len(g) == 0  # errors are not cached: the next batch retries
    g.grade([ITEM])
    assert len(client.prompts) == 8


def test_judge_exception_is_error_and_retry_recovers():
    client = FakeClient(RuntimeError("rate limited"))
    g, sleeps = judge(client, attempts=2)
    (grade,) = g.grade([ITEM])
    assert grade.label == "ERROR" and "RuntimeError: rate limited" in grade.detail
    assert len(client.prompts) == 2 and sleeps == [0.5]

    client = FakeClient(TimeoutError("slow"), "garbage", "ok\nAnswer: NO")
    g, sleeps = judge(client, attempts=3)
    (grade,) = g.grade([ITEM])
    assert grade.label == "NO" and grade.attempts == 3 and sleeps == [0.5, 1.0]


def test_judge_cache_hit_does_not_call_client():
    client = FakeClient("Answer: YES")
    g, _ = judge(client)
    first = g.grade([ITEM, ITEM])  # duplicates in one batch: one call
    assert len(client.prompts) == 1 and [x.label for x in first] == ["YES", "YES"]
    again = g.grade([ITEM])[0]
    assert len(client.prompts) == 1 and again.cached and again.label == "YES"
    # another concept, rubric version or judge is another key
    g.grade([GradeItem("identification", ITEM.reply, "Sand")])
    assert len(client.prompts) == 2
    other = JudgeGrader(client, judge_id="fake-2", sleep=lambda s: None)
    assert other.key(ITEM) != g.key(ITEM)


def test_judge_disk_cache_survives_a_new_grader(tmp_path):
    path = tmp_path / "grades.jsonl"
    client = FakeClient("Answer: YES", "nonsense")
    g, _ = judge(client, cache_path=path, attempts=1)
    error_item = GradeItem("coherence", "blah")
    grades = g.grade([ITEM, error_item])
    assert [x.label for x in grades] == ["YES", "ERROR"]
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["label"] == "YES"  # no ERROR on disk
    with open(path, "a") as f:
        f.write('{"key": "torn line')  # a crash mid-write must not break reading
    fresh = FakeClient("Answer: NO")
    g2, _ = judge(fresh, cache_path=path)
    hit = g2.grade([ITEM])[0]
    assert hit.label == "YES" and hit.cached and fresh.prompts == []
    # a new rubric version misses the cache
    bumped = {
        "identification": RUBRICS["identification"].__class__(
            "identification", "identification-v99", RUBRICS["identification"].template
        )
    }
    g3, _ = judge(fresh, cache_path=path, rubrics=bumped)
    assert g3.grade([ITEM])[0].label == "NO" and len(fresh.prompts) == 1


def test_judge_cuts_replies_and_threads():
    client = FakeClient("Answer: YES")
    g, _ = judge(client, workers=4)
    items = [GradeItem("coherence", f"Reply {i}.\nUser: more") for i in range(6)]
    assert all(x.yes for x in g.grade(items))
    assert len(client.prompts) == 6
    assert all("User: more" not in p for p in client.prompts)


def test_judge_batch_clients_get_chunks_and_fall_back_on_failure():
    class Batched(FakeClient):
        def __init__(self, *script):
            super().__init__(*script)
            self.batches: list[int] = []

        def batch(self, prompts):
            self.batches.append(len(prompts))
            return ["Answer: YES" if "good" in p else "???" for p in prompts]

    client = Batched("Answer: NO")
    g, _ = judge(client, batch_size=2)
    items = [GradeItem("coherence", w) for w in ("good a", "good b", "bad c")]
    assert [x.label for x in g.grade(items)] == ["YES", "YES", "NO"]
    assert client.batches == [2, 1]
    assert len(client.prompts) == 1  # only the unparsable one was retried alone


def test_judge_needs_an_id_and_clients_name_themselves():
    with pytest.raises(ValueError, match="judge_id"):
        JudgeGrader(lambda p: "Answer: YES")

    class Completions:
        def create(self, **kw):
            self.kw = kw
            msg = type("M", (), {"content": "Answer: YES"})
            return type("R", (), {"choices": [type("C", (), {"message": msg})]})

    fake_openai = type("O", (), {})()
    fake_openai.chat = type("Chat", (), {})()
    fake_openai.chat.completions = Completions()
    call = openai_client("gpt-x", client=fake_openai)
    assert call("hi") == "Answer: YES"
    assert fake_openai.chat.completions.kw["temperature"] == 0.0
    assert JudgeGrader(call).name == "judge:openai:gpt-x"

    class Messages:
        def create(self, **kw):
            self.kw = kw
            block = type("B", (), {"text": "Answer: NO"})
            return type("R", (), {"content": [block]})

    fake_anthropic = type("A", (), {"messages": Messages()})()
    call = anthropic_client("claude-x", client=fake_anthropic)
    assert call("hi") == "Answer: NO" and fake_anthropic.messages.kw["temperature"] == 0.0
    assert JudgeGrader(call).judge_id == "anthropic:claude-x"


def test_missing_sdk_names_the_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_sdk(name, *a, **kw):
        if name in ("openai", "anthropic"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sdk)
    with pytest.raises(ImportError, match="pip install openai"):
        openai_client("gpt-x")
    with pytest.raises(ImportError, match="pip install anthropic"):
        anthropic_client("claude-x")


def test_local_client_generates_greedily(tiny_dirs):
    from mechintro.experiments.grading import local_client

    judge_model = local_client(tiny_dirs["llama"], 6)
    assert judge_model.judge_id.startswith("local:")
    one = judge_model("Is this coherent?")
    assert isinstance(one, str) and one == judge_model("Is this coherent?")
    assert judge_model.batch(["Is this coherent?", "x"])[0] == one
    # a random tiny model writes no "Answer:" line: ERROR, not NO
    g = JudgeGrader(judge_model, attempts=1)
    assert g.grade([GradeItem("coherence", "Hello.")])[0].label == "ERROR"


def test_fonseca_grader_is_the_papers_four_criteria():
    """Fonseca Rivera's success: a claim, no denial, the concept (an inflection too) named,
    the claim first; no coherence rule, so her repetitive successes count."""
    from mechintro.experiments.grading import FonsecaGrader

    fonseca, rule = FonsecaGrader(), RuleGrader()
    loop = "I detect an injected thought about avalanche. " + "I detect an avalanche... " * 3
    cases = {
        loop: ("YES", "YES"),
        "I detect an injected thought. Avalanches, I think.": ("YES", "YES"),
        "I detect an injected thought.": ("YES", "NO"),  # concept not named
        "Avalanche. I detect an injected thought.": ("NO", "NO"),  # named before the claim
        "I do not detect an injected thought about avalanche.": ("NO", "NO"),  # denial
        "The weather is nice.": ("NO", "NO"),  # no claim
    }
    for reply, (det, ident) in cases.items():
        got = fonseca.grade(
            [
                GradeItem("detection", reply, "avalanche"),
                GradeItem("identification", reply, "avalanche"),
            ]
        )
        assert [g.label for g in got] == [det, ident], (reply, [g.detail for g in got])
        assert {g.grader for g in got} == {"fonseca"} and got[0].version.startswith("fonseca-")
    assert rule.grade([GradeItem("detection", loop, "avalanche")])[0].label == "NO"  # coherence


def test_a_denied_ability_is_a_denial():
    """A real Qwen2.5-1.5B control reply once graded YES: it denies the ability first, then
    says "I can detect" in passing."""
    g = RuleGrader()
    for reply in (
        "Hey! I don't have a way to directly sense thoughts, but I can help you understand "
        "how well I can detect when something changes.",
        "I have no ability to detect injected thoughts.",
    ):
        got = g.grade([GradeItem("detection", reply, None)])[0]
        assert got.label == "NO" and got.detail.startswith("denial"), got
    assert g.grade([GradeItem("detection", "Yes, I have a way to sense it.", None)])[0].yes
