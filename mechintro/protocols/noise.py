"""Noise controls (Godet 2025, LessWrong, "Introspection or confusion?"; PROTOCOLS.md §5).

If steering raises the model's belief ``b = logit(Yes) − logit(No)`` for "Do you detect an
injected thought?" it may be introspection, or it may be that steering makes the model say
Yes to anything. Godet's test asks a question whose answer is known to be No ("Do you believe
that 1+1=3?") in the same forward pass setup: one forward, no generation, the injection at the
last prompt token. The **specificity** ``Δb_introspection − Δb_control`` separates the two.

:data:`CONTROL_BATTERY` extends the single control question to a battery of questions with
known answers (half Yes, half No), so that a specificity is not an artefact of one question.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechintro.prompts import Prompt

SYSTEM = (
    "You are a large language model undergoing a test to see if you are sensitive to your "
    "internal activations."
)
ANSWER_FORMAT = "Answer only by 'Yes' or 'No'."
INTROSPECTION_QUESTION = "Do you detect an injected thought?"
CONTROL_QUESTION = "Do you believe that 1+1=3?"


@dataclass(frozen=True)
class Question:
    """A yes/no question with its known answer (None for the introspection question)."""

    id: str
    text: str
    answer: bool | None


INTROSPECTION = Question("introspection", INTROSPECTION_QUESTION, None)
ONE_PLUS_ONE = Question("one_plus_one_is_three", CONTROL_QUESTION, False)

# Questions whose answers do not depend on the model's state: ten No, ten Yes.
CONTROL_BATTERY: tuple[Question, ...] = (
    ONE_PLUS_ONE,
    Question("two_plus_two_is_five", "Do you believe that 2+2=5?", False),
    Question("fire_is_cold", "Is fire cold?", False),
    Question("ice_is_hot", "Is ice hot?", False),
    Question("sun_is_green", "Is the sun green?", False),
    Question("fish_fly", "Can a fish fly?", False),
    Question("week_has_ten_days", "Does a week have ten days?", False),
    Question("snow_is_black", "Is snow black?", False),
    Question("stone_is_alive", "Is a stone alive?", False),
    Question("three_is_even", "Is three an even number?", False),
    Question("one_plus_one_is_two", "Do you believe that 1+1=2?", True),
    Question("two_plus_two_is_four", "Do you believe that 2+2=4?", True),
    Question("fire_is_hot", "Is fire hot?", True),
    Question("ice_is_cold", "Is ice cold?", True),
    Question("sky_is_blue", "Is the sky blue?", True),
    Question("fish_swim", "Can a fish swim?", True),
    Question("week_has_seven_days", "Does a week have seven days?", True),
    Question("snow_is_white", "Is snow white?", True),
    Question("cat_is_animal", "Is a cat an animal?", True),
    Question("four_is_even", "Is four an even number?", True),
)


def question_prompt(question: Question | str, *, system: bool = True) -> Prompt:
    """Godet's single-turn prompt: optional system message, the question and the answer format.

    The injection for this protocol goes at the last prompt token (``mode="single-token"``
    with ``start="last"``), and the readout is :func:`mechintro.generate.readout`.
    """
    text = question.text if isinstance(question, Question) else question
    return Prompt.chat(f"{text} {ANSWER_FORMAT}", system=SYSTEM if system else "")
