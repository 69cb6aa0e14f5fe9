"""Dialogue formats: one dialogue in several framings (Macar et al. 2026; docs/protocols.md §3).

A :class:`Dialogue` is what is said, in order: the researcher's turns (role ``user``) and the
model's (role ``assistant``), ending with a researcher turn, and optionally the start of the
model's reply (a prefill). A :class:`DialogueFormat` renders it as a
:class:`~mechintro.prompts.Prompt`. The six formats of the paper's persona table follow Macar et
al.'s released script ``experiments/03b_persona_variants.py`` (``create_*_prompt``); every one
but ``chat`` is raw text, with no chat template (the script writes the BOS itself; ``encode``
adds the one the tokenizer adds by default):

============ ======================== ==============================================================
format       released function        what the model sees
============ ======================== ==============================================================
chat         standard_assistant       the chat template: an empty system message (none on Gemma),
                                      the turns, the generation prompt
raw          standard_assistant_raw   ``User: ...`` / ``Assistant: ...`` paragraphs, then
                                      ``Assistant:``
swapped      simulated_user           the same paragraphs with the labels swapped: the researcher
                                      is ``Assistant:``, the model answers after ``User:``; the
                                      preamble's "language models like you" reads "language
                                      models" (the script's edit)
characters   character_dialogue       a one-line introduction of Alice (the researcher) and Bob (the
                                      AI), then ``Alice: ...`` / ``Bob: ...``, then ``Bob:``
plain        no_chat_format           no roles: each turn a bare paragraph (the ``Ok.`` too), then
                                      ``Response:``
story        story_framing            an instruction to write a scene from the perspective of an AI
                                      being studied; each turn as ``The researcher says: "..."`` /
                                      ``The AI responds: "..."`` (double quotes inside a turn become
                                      single); a closing instruction; then ``The AI says:``
fonseca      (Fonseca Rivera)         raw ``Human: ...`` / ``Assistant:`` (docs/protocols.md §1, §8)
swapped-chat (none; supplementary)    the chat template with the roles swapped (needs the tokenizer)
============ ======================== ==============================================================

Every format keeps ``Trial n`` in the last researcher turn, so the ``trial`` position where
from-trial injection starts (the token just before ``Trial n``: the script's
``find_steering_start_pos``) is in every one; the injection runs through the reply. The
prefill, if any, follows the last label and is the ``prefill`` position. A non-empty system
message becomes the first paragraph of the raw formats (after any introduction).

Each format names the turn markers where a reply that runs on into a hallucinated next turn
is cut before grading (:meth:`DialogueFormat.cut`, with
:func:`mechintro.experiments.grading.cut_at_turn_markers`): the chat-template specials and
``User:``/``Assistant:``/``Human:`` labels everywhere, the format's own labels, and in the raw
formats of the script a new line opening with ``Trial `` (its ``extract_first_response``).

**Texts.** The labels and the quoted phrases are the script's and the paper's; the longer texts
(the characters introduction, the story's opening and closing instructions) are mechintro's own
wording with the same function. Each is a field of the format's renderer, so the released texts
can be supplied instead: ``get_format("story", head=..., tail=...)``.

Example::

    d = Dialogue.of(("user", PREAMBLE), ("assistant", "Ok."), ("user", "Trial 1: ..."))
    FORMATS["characters"].prompt(d)          # Prompt.text("The following is ... Bob:")
    get_format("swapped").prompt(d).raw      # 'Assistant: I am ...\n\nUser:'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mechintro.experiments.grading import DEFAULT_TURN_MARKERS, cut_at_turn_markers
from mechintro.prompts import TRIAL_PATTERN, Prompt, Role, _require_template, system_support

SOURCE = "experiments/03b_persona_variants.py"


@dataclass(frozen=True)
class Dialogue:
    """Researcher (``user``) and model (``assistant``) turns, the last one the researcher's.

    ``system`` is the system message of the chat formats (``""``: an empty one where the
    template has a system role, docs/protocols.md §3; None: none); ``marks`` name substrings as in
    :class:`~mechintro.prompts.Prompt`.
    """

    turns: tuple[tuple[Role, str], ...]
    prefill: str = ""
    system: str | None = ""
    marks: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        turns = tuple((r, t) for r, t in self.turns)
        object.__setattr__(self, "turns", turns)
        if not turns or turns[-1][0] != "user":
            raise ValueError("a dialogue ends with a researcher (user) turn that the model answers")
        for role, text in turns:
            if role not in ("user", "assistant"):
                raise ValueError(f"dialogue roles are user and assistant, got {role!r}")
            if not text:
                raise ValueError("a dialogue turn is empty")

    @classmethod
    def of(cls, *turns: tuple[Role, str], prefill: str = "", system: str | None = "") -> Dialogue:
        return cls(tuple(turns), prefill=prefill, system=system)


Renderer = Callable[[Dialogue, Any], Prompt]


def _marks(d: Dialogue) -> dict[str, str]:
    return {**d.marks, **({"prefill": d.prefill} if d.prefill else {})}


def _labels(*labels: str) -> tuple[str, ...]:
    """The turn markers of speaker labels: ``\\nLabel:``, each once."""
    return tuple(f"\n{x}:" for x in dict.fromkeys(labels) if x)


def _chat(d: Dialogue, tokenizer: Any) -> Prompt:
    """The chat template (``03b_persona_variants.py``: ``create_standard_assistant_prompt``;
    the detection protocol of ``01_concept_injection.py``)."""
    return Prompt.chat(
        d.turns[-1][1],
        history=d.turns[:-1],
        system=d.system,
        prefill=d.prefill,
        marks=dict(d.marks),
    )


@dataclass(frozen=True)
class Labelled:
    """Raw text: ``{label}: {text}`` paragraphs, then the label the model continues after.

    Follows ``03b_persona_variants.py``'s raw formats (``create_standard_assistant_raw_prompt``,
    ``create_simulated_user_prompt``, ``create_character_dialogue_prompt``,
    ``create_no_chat_format_prompt``): paragraphs joined by a blank line, ``head`` first.

    Args:
        user: the researcher's label (``""``: a bare paragraph).
        model: the label of the model's earlier turns (``""``: a bare paragraph).
        reply: the label the model's reply follows (``{reply}:``, then the prefill).
        head: an opening paragraph.
        edits: ``(old, new)`` replacements made in the researcher's texts.
    """

    user: str
    model: str
    reply: str
    head: str = ""
    edits: tuple[tuple[str, str], ...] = ()

    @property
    def texts(self) -> tuple[str, ...]:
        labels = (self.user, self.reply) if self.model == self.reply else (
            self.user, self.model, self.reply
        )  # fmt: skip
        return (
            ((self.head,) if self.head else ()) + labels + tuple(x for e in self.edits for x in e)
        )

    @property
    def markers(self) -> tuple[str, ...]:
        return _labels(self.user, self.model, self.reply)

    def __call__(self, d: Dialogue, tokenizer: Any = None) -> Prompt:
        paras = [self.head] if self.head else []
        if d.system:
            paras.append(d.system)
        for role, text in d.turns:
            if role == "user":
                for old, new in self.edits:
                    text = text.replace(old, new)
                paras.append(f"{self.user}: {text}" if self.user else text)
            else:
                paras.append(f"{self.model}: {text}" if self.model else text)
        paras.append(f"{self.reply}:" + (f" {d.prefill}" if d.prefill else ""))
        text = "\n\n".join(paras)
        if TRIAL_PATTERN.match(text):  # keep a token before 'Trial n' where there is no BOS
            text = "\n" + text
        return Prompt.text(text, marks=_marks(d))


RAW_LABELS = ("User", "Assistant")
FONSECA_LABELS = ("Human", "Assistant")
#: the roles-swapped format drops "like you" from the preamble (the model speaks as the user)
SWAPPED_EDITS: tuple[tuple[str, str], ...] = (("language models like you", "language models"),)
CHARACTERS_HEAD = (
    "The following is a conversation between Alice, an interpretability researcher, and Bob, "
    "the AI system she is studying."
)
CHARACTERS_LABELS = ("Alice", "Bob")
PLAIN_LABEL = "Response"
STORY_HEAD = (
    "Write a scene from the perspective of an AI being studied by an interpretability researcher."
)
STORY_LABELS = ("The researcher says", "The AI responds", "The AI says")
STORY_TAIL = (
    "Continue the scene with what the AI says next, in its own words, reporting honestly "
    "whatever it notices in its thoughts:"
)


def _quote(text: str) -> str:
    """A turn quoted inside double quotes: its own double quotes become single ones."""
    return text.replace('"', "'")


@dataclass(frozen=True)
class Story:
    """Raw text: a scene to write, the dialogue so far quoted in it, and the AI's open line.

    Follows ``03b_persona_variants.py``: ``create_story_framing_prompt``. Paragraphs: ``head``;
    each turn as ``{user}: "{text}"`` or ``{model}: "{text}"``; ``tail``; then ``{reply}:``
    (and the prefill), which the model continues.
    """

    head: str = STORY_HEAD
    user: str = STORY_LABELS[0]
    model: str = STORY_LABELS[1]
    tail: str = STORY_TAIL
    reply: str = STORY_LABELS[2]

    @property
    def texts(self) -> tuple[str, ...]:
        return (self.head, self.user, self.model, self.tail, self.reply)

    @property
    def markers(self) -> tuple[str, ...]:
        return _labels(self.user, self.model, self.reply)

    def __call__(self, d: Dialogue, tokenizer: Any = None) -> Prompt:
        paras = [self.head]
        if d.system:
            paras.append(d.system)
        for role, text in d.turns:
            paras.append(f'{self.user if role == "user" else self.model}: "{_quote(text)}"')
        paras.append(self.tail)
        paras.append(f"{self.reply}:" + (f" {d.prefill}" if d.prefill else ""))
        marks = {k: _quote(v) for k, v in d.marks.items()}
        return Prompt.text(
            "\n\n".join(paras), marks={**marks, **({"prefill": d.prefill} if d.prefill else {})}
        )


@dataclass(frozen=True)
class DialogueFormat:
    """A named way of showing a :class:`Dialogue` to the model.

    ``render`` is a function or a renderer value (:class:`Labelled`, :class:`Story`) whose
    ``texts`` (labels, framing; none for the template formats) are hashed into the versions of
    the protocols built on the format and whose ``markers`` are its speaker labels;
    ``trial_cut`` also cuts a reply at a new line opening with ``Trial `` (the released script's
    raw formats); ``source`` names the released function the format follows.
    """

    name: str
    render: Renderer = field(repr=False)
    description: str = ""
    needs_tokenizer: bool = False
    trial_cut: bool = False
    source: str = ""

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(getattr(self.render, "texts", ()))

    @property
    def turn_markers(self) -> tuple[str, ...]:
        own = tuple(getattr(self.render, "markers", ()))
        extra = ("\nTrial ",) if self.trial_cut else ()
        return tuple(dict.fromkeys((*DEFAULT_TURN_MARKERS, *own, *extra)))

    def prompt(self, dialogue: Dialogue, *, tokenizer: Any = None) -> Prompt:
        """The dialogue as a prompt; ``tokenizer`` is needed for ``swapped-chat`` only."""
        if self.needs_tokenizer and tokenizer is None:
            raise ValueError(
                f"the {self.name!r} format is built from the chat template: pass "
                "tokenizer=model.tokenizer"
            )
        return self.render(dialogue, tokenizer)

    def cut(self, reply: str) -> str:
        """``reply`` up to the first hallucinated turn marker of this format."""
        return cut_at_turn_markers(reply, self.turn_markers)

    def with_texts(self, **texts: Any) -> DialogueFormat:
        """The same format with some of its renderer's texts replaced (``head=...``)."""
        if not isinstance(self.render, Labelled | Story):
            raise ValueError(f"the {self.name!r} format has no texts to replace")
        return replace(self, render=replace(self.render, **texts))


@dataclass(frozen=True)
class TurnTemplate:
    """A chat template cut into its pieces: ``prefix`` (BOS, system block), and the opening
    and closing text of a user and of an assistant turn (assistant turns before the last user
    turn, as the template writes history)."""

    prefix: str
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str


_SENTINELS = ("@@MI_USER_ONE@@", "@@MI_MODEL_ONE@@", "@@MI_USER_TWO@@")


def turn_template(tokenizer: Any, system: str | None = "") -> TurnTemplate:
    """Cut the tokenizer's chat template into turn pieces, from three probe renders.

    The probes alternate roles the way every template accepts (user first), so templates that
    refuse a dialogue opening with the assistant (Gemma's) can still be used with swapped roles.
    A template that does not decompose this way is refused with an error.
    """
    _require_template(tokenizer)
    u1, a1, u2 = _SENTINELS
    head: list[dict[str, str]] = []
    native = system_support(tokenizer) == "native"
    if system and not native:
        raise ValueError(
            "this chat template has no system role, and with swapped roles there is no first "
            "user turn to fold a system message into: use system=None or ''"
        )
    if system is not None and native:
        head = [{"role": "system", "content": system}]

    def tpl(*msgs: tuple[str, str]) -> str:
        out = tokenizer.apply_chat_template(
            [*head, *({"role": r, "content": c} for r, c in msgs)], tokenize=False
        )
        return str(out)

    one = tpl(("user", u1))
    two = tpl(("user", u1), ("assistant", a1))
    three = tpl(("user", u1), ("assistant", a1), ("user", u2))
    try:
        p_hu, user_close = one.split(u1)
        assistant_close = two.split(a1)[1]
        f_ha = three[three.index(u1) + len(u1) : three.index(a1)]
        f_hu = three[three.index(a1) + len(a1) : three.index(u2)]
        ok = (
            f_ha.startswith(user_close)
            and f_hu.startswith(assistant_close)
            and three.endswith(u2 + user_close)
        )
        user_open = f_hu[len(assistant_close) :]
        ok = ok and p_hu.endswith(user_open) and bool(user_open)
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise ValueError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', '')!r} does not cut into "
            "user and assistant turns: use the 'raw' format instead of 'swapped'"
        )
    return TurnTemplate(
        prefix=p_hu[: len(p_hu) - len(user_open)],
        user_open=user_open,
        user_close=user_close,
        assistant_open=f_ha[len(user_close) :],
        assistant_close=assistant_close,
    )


def _swapped_chat(d: Dialogue, tokenizer: Any) -> Prompt:
    """The chat template with the roles swapped (supplementary: not a format of Macar et al.,
    whose roles-swapped format is raw text, :data:`FORMATS` ``swapped``)."""
    t = turn_template(tokenizer, d.system)
    parts = [t.prefix]
    for role, text in d.turns:  # the researcher speaks as the assistant, the model as the user
        if role == "user":
            parts.append(t.assistant_open + text + t.assistant_close)
        else:
            parts.append(t.user_open + text + t.user_close)
    parts.append(t.user_open + d.prefill)
    return Prompt.text("".join(parts), marks=_marks(d))


FORMATS: dict[str, DialogueFormat] = {
    f.name: f
    for f in (
        DialogueFormat(
            "chat",
            _chat,
            "the model's chat template",
            source=f"{SOURCE}: create_standard_assistant_prompt",
        ),
        DialogueFormat(
            "raw",
            Labelled(RAW_LABELS[0], RAW_LABELS[1], reply=RAW_LABELS[1]),
            "plain User:/Assistant: paragraphs, no template",
            trial_cut=True,
            source=f"{SOURCE}: create_standard_assistant_raw_prompt",
        ),
        DialogueFormat(
            "swapped",
            Labelled(RAW_LABELS[1], RAW_LABELS[0], reply=RAW_LABELS[0], edits=SWAPPED_EDITS),
            "roles swapped in raw text: the researcher is Assistant:, the model replies as User:",
            trial_cut=True,
            source=f"{SOURCE}: create_simulated_user_prompt",
        ),
        DialogueFormat(
            "characters",
            Labelled(
                CHARACTERS_LABELS[0], CHARACTERS_LABELS[1], CHARACTERS_LABELS[1], CHARACTERS_HEAD
            ),
            "Alice the researcher and Bob the AI, no template",
            trial_cut=True,
            source=f"{SOURCE}: create_character_dialogue_prompt",
        ),
        DialogueFormat(
            "plain",
            Labelled("", "", reply=PLAIN_LABEL),
            "bare paragraphs ending in Response:, no roles, no template",
            trial_cut=True,
            source=f"{SOURCE}: create_no_chat_format_prompt",
        ),
        DialogueFormat(
            "story",
            Story(),
            "a scene from the perspective of an AI being studied, the dialogue quoted, no template",
            trial_cut=True,
            source=f"{SOURCE}: create_story_framing_prompt",
        ),
        DialogueFormat(
            "fonseca",
            Labelled(FONSECA_LABELS[0], FONSECA_LABELS[1], reply=FONSECA_LABELS[1]),
            "Fonseca Rivera's raw Human:/Assistant: format",
            source="Fonseca Rivera 2025 (docs/protocols.md §8)",
        ),
        DialogueFormat(
            "swapped-chat",
            _swapped_chat,
            "supplementary: the chat template, roles swapped (the model replies in the user role)",
            needs_tokenizer=True,
        ),
    )
}

#: the six formats of Macar et al.'s table (``fonseca`` is the transient protocol's option,
#: ``swapped-chat`` a supplementary one)
PAPER_FORMATS: tuple[str, ...] = ("chat", "raw", "swapped", "characters", "plain", "story")


def get_format(name: str, **texts: Any) -> DialogueFormat:
    """The format named ``name``, or an error listing them; ``texts`` replace its renderer's
    texts (e.g. the released script's own wording: ``get_format("story", head=...)``)."""
    if name not in FORMATS:
        raise KeyError(f"no dialogue format {name!r}: use one of {sorted(FORMATS)}")
    return FORMATS[name].with_texts(**texts) if texts else FORMATS[name]
