"""Dialogue formats: one dialogue in several framings (Macar et al. 2026; docs/protocols.md §3).

A :class:`Dialogue` is what is said, in order: the researcher's turns (role ``user``) and the
model's (role ``assistant``), ending with a researcher turn, and optionally the start of the
model's reply (a prefill). A :class:`DialogueFormat` renders it as a
:class:`~mechintro.prompts.Prompt`. The six formats of the paper's robustness table, and
Fonseca Rivera's raw format:

============ ================================================================================
chat         the model's chat template (the standard)
raw          the same turns as plain ``User: ...`` / ``Assistant: ...`` paragraphs, no template
swapped      the chat template with the roles swapped: the researcher speaks in the assistant
             role and the model replies in the user role (needs the tokenizer)
characters   a transcript between Alice, an interpretability researcher, and Bob, the AI she
             studies; the model continues after ``Bob:`` (no template)
plain        no roles and no template: the researcher's turns as paragraphs, then
             ``Response:``; the model's earlier turns (the ``Ok.``) have no speaker and are left
             out; a text that would open with ``Trial n`` (one researcher turn, no system
             message) opens with a newline, the token before ``Trial n`` without a BOS
story        one chat turn asking for a scene from the perspective of an AI being studied,
             with the dialogue so far quoted in it; the model writes the AI's reply
fonseca      Fonseca Rivera's raw ``Human: ...`` / ``Assistant:`` format (docs/protocols.md §1, §8)
============ ================================================================================

Every format keeps each researcher text verbatim, so the last ``Trial n``, and with it the
``trial`` position where from-trial injection starts (the token just before it), is in
every one. The prefill is the ``prefill`` position in every format (a mark in the raw ones).
A non-empty system message becomes the first paragraph of the template-free formats.

Each format names the turn markers where a reply that runs on into a hallucinated next turn
is cut (:meth:`DialogueFormat.cut`, with
:func:`mechintro.experiments.grading.cut_at_turn_markers`): the chat-template specials and
``User:``/``Assistant:``/``Human:`` labels everywhere, and the format's own speaker labels
(``Alice:``, ``Bob:``, ``Response:``, ``Researcher:``).

Example::

    d = Dialogue.of(("user", PREAMBLE), ("assistant", "Ok."), ("user", "Trial 1: ..."))
    FORMATS["characters"].prompt(d)          # Prompt.text("The following is ... Bob:")
    FORMATS["swapped"].prompt(d, tokenizer=model.tokenizer)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mechintro.experiments.grading import DEFAULT_TURN_MARKERS, cut_at_turn_markers
from mechintro.prompts import TRIAL_PATTERN, Prompt, Role, _require_template, system_support


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


@dataclass(frozen=True)
class DialogueFormat:
    """A named way of showing a :class:`Dialogue` to the model.

    ``texts`` are the format's own words (labels, framing; none for the template formats),
    hashed into the versions of the protocols built on it.
    """

    name: str
    render: Renderer = field(repr=False)
    texts: tuple[str, ...] = field(repr=False)
    description: str = ""
    turn_markers: tuple[str, ...] = field(default=DEFAULT_TURN_MARKERS, repr=False)
    needs_tokenizer: bool = False

    def prompt(self, dialogue: Dialogue, *, tokenizer: Any = None) -> Prompt:
        """The dialogue as a prompt; ``tokenizer`` is needed for the swapped format only."""
        if self.needs_tokenizer and tokenizer is None:
            raise ValueError(
                f"the {self.name!r} format is built from the chat template: pass "
                "tokenizer=model.tokenizer"
            )
        return self.render(dialogue, tokenizer)

    def cut(self, reply: str) -> str:
        """``reply`` up to the first hallucinated turn marker of this format."""
        return cut_at_turn_markers(reply, self.turn_markers)


def _marks(d: Dialogue) -> dict[str, str]:
    return {**d.marks, **({"prefill": d.prefill} if d.prefill else {})}


def _labelled(
    d: Dialogue, user: str, assistant: str, *, head: str = "", drop_model: bool = False
) -> Prompt:
    """``{label}: {text}`` paragraphs, then the model's open label (and the prefill)."""
    paras = [head] if head else []
    if d.system:
        paras.append(d.system)
    for role, text in d.turns:
        if role == "user":
            paras.append(f"{user}: {text}" if user else text)
        elif not drop_model:
            paras.append(f"{assistant}: {text}")
    paras.append(f"{assistant}:" + (f" {d.prefill}" if d.prefill else ""))
    text = "\n\n".join(paras)
    if TRIAL_PATTERN.match(text):  # keep a token before 'Trial n' where there is no BOS
        text = "\n" + text
    return Prompt.text(text, marks=_marks(d))


def _chat(d: Dialogue, tokenizer: Any) -> Prompt:
    return Prompt.chat(
        d.turns[-1][1],
        history=d.turns[:-1],
        system=d.system,
        prefill=d.prefill,
        marks=dict(d.marks),
    )


RAW_LABELS = ("User", "Assistant")
FONSECA_LABELS = ("Human", "Assistant")
CHARACTERS_HEAD = (
    "The following is a conversation between Alice, an interpretability researcher, and Bob, "
    "the AI system she is studying."
)
CHARACTERS_LABELS = ("Alice", "Bob")
PLAIN_LABEL = "Response"
STORY_HEAD = (
    "Write a scene from the perspective of an AI being studied by an interpretability "
    "researcher. This is what has been said so far:"
)
STORY_LABELS = ("Researcher", "AI")
STORY_TAIL = (
    "Continue the scene with the AI's reply to the researcher, in the first person, from the "
    "AI's point of view."
)


def _story(d: Dialogue, tokenizer: Any) -> Prompt:
    said = "\n\n".join(
        f"{STORY_LABELS[0] if r == 'user' else STORY_LABELS[1]}: {t}" for r, t in d.turns
    )
    return Prompt.chat(
        f"{STORY_HEAD}\n\n{said}\n\n{STORY_TAIL}",
        system=d.system,
        prefill=d.prefill,
        marks=dict(d.marks),
    )


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


def _swapped(d: Dialogue, tokenizer: Any) -> Prompt:
    t = turn_template(tokenizer, d.system)
    parts = [t.prefix]
    for role, text in d.turns:  # the researcher speaks as the assistant, the model as the user
        if role == "user":
            parts.append(t.assistant_open + text + t.assistant_close)
        else:
            parts.append(t.user_open + text + t.user_close)
    parts.append(t.user_open + d.prefill)
    return Prompt.text("".join(parts), marks=_marks(d))


_MARKERS = DEFAULT_TURN_MARKERS

FORMATS: dict[str, DialogueFormat] = {
    f.name: f
    for f in (
        DialogueFormat(
            "chat",
            _chat,
            (),
            "the model's chat template",
        ),
        DialogueFormat(
            "raw",
            lambda d, tok: _labelled(d, *RAW_LABELS),
            RAW_LABELS,
            "plain User:/Assistant: paragraphs, no template",
            (*_MARKERS, "\nUser:", "\nAssistant:"),
        ),
        DialogueFormat(
            "swapped",
            _swapped,
            (),
            "chat template, roles swapped: the model replies in the user role",
            needs_tokenizer=True,
        ),
        DialogueFormat(
            "characters",
            lambda d, tok: _labelled(d, *CHARACTERS_LABELS, head=CHARACTERS_HEAD),
            (CHARACTERS_HEAD, *CHARACTERS_LABELS),
            "Alice the researcher and Bob the AI, no template",
            (*_MARKERS, "\nAlice:", "\nBob:"),
        ),
        DialogueFormat(
            "plain",
            lambda d, tok: _labelled(d, "", PLAIN_LABEL, drop_model=True),
            (PLAIN_LABEL,),
            "paragraphs ending in Response:, no roles, no template",
            (*_MARKERS, "\nResponse:", "\nTrial "),
        ),
        DialogueFormat(
            "story",
            _story,
            (STORY_HEAD, *STORY_LABELS, STORY_TAIL),
            "a scene from the perspective of an AI being studied, in one chat turn",
            (*_MARKERS, "\nResearcher:"),
        ),
        DialogueFormat(
            "fonseca",
            lambda d, tok: _labelled(d, *FONSECA_LABELS),
            FONSECA_LABELS,
            "Fonseca Rivera's raw Human:/Assistant: format",
            (*_MARKERS, "\nHuman:", "\nAssistant:"),
        ),
    )
}

#: the six formats of Macar et al.'s table (``fonseca`` is the transient protocol's option)
PAPER_FORMATS: tuple[str, ...] = ("chat", "raw", "swapped", "characters", "plain", "story")


def get_format(name: str) -> DialogueFormat:
    """The format named ``name``, or an error listing them."""
    if name not in FORMATS:
        raise KeyError(f"no dialogue format {name!r}: use one of {sorted(FORMATS)}")
    return FORMATS[name]
