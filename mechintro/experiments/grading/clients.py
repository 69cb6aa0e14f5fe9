"""Judge clients: OpenAI, Anthropic and a local TransformerLens model as ``prompt -> text``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mechintro.experiments.grading.judge import JudgeClient


def _named(fn: Callable[..., Any], judge_id: str) -> Any:
    fn.judge_id = judge_id  # type: ignore[attr-defined]
    return fn


def openai_client(
    model: str,
    *,
    temperature: float | None = 0.0,
    max_tokens: int | None = 512,
    client: Any = None,
    **kwargs: Any,
) -> JudgeClient:
    """A judge that calls OpenAI's chat completions (``pip install openai``; OPENAI_API_KEY).

    ``temperature=None`` / ``max_tokens=None`` leave those out (models that refuse them);
    ``client`` is an ``openai.OpenAI`` instance (other base URLs, keys); ``kwargs`` go to
    ``chat.completions.create``.

    Example::

        judge = JudgeGrader(openai_client("gpt-4o-mini"))
    """
    if client is None:
        try:
            import openai
        except ImportError as e:
            raise ImportError(
                "openai_client needs the OpenAI SDK: pip install openai "
                "(or pip install 'mechintro[judges]')"
            ) from e
        client = openai.OpenAI()
    extra = dict(kwargs)
    if temperature is not None:
        extra["temperature"] = temperature
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens

    def call(prompt: str) -> str:
        resp = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], **extra
        )
        return resp.choices[0].message.content or ""

    return _named(call, f"openai:{model}")


def anthropic_client(
    model: str,
    *,
    temperature: float = 0.0,
    max_tokens: int = 512,
    client: Any = None,
    **kwargs: Any,
) -> JudgeClient:
    """A judge that calls Anthropic's messages API (``pip install anthropic``; ANTHROPIC_API_KEY).

    Example::

        judge = JudgeGrader(anthropic_client("claude-3-5-haiku-latest"))
    """
    if client is None:
        try:
            import anthropic
        except ImportError as e:
            raise ImportError(
                "anthropic_client needs the Anthropic SDK: pip install anthropic "
                "(or pip install 'mechintro[judges]')"
            ) from e
        client = anthropic.Anthropic()

    def call(prompt: str) -> str:
        resp = client.messages.create(
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            messages=[{"role": "user", "content": prompt}],
            **kwargs,
        )
        return "".join(getattr(b, "text", "") for b in resp.content)

    return _named(call, f"anthropic:{model}")


@dataclass
class LocalJudge:
    """A judge on a TransformerLens model, greedy, through :func:`mechintro.generation.generate`.

    Call it on one prompt, or ``batch(prompts)`` for many in one batched generation.
    """

    model: Any
    max_new_tokens: int = 256
    judge_id: str = "local"
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    def batch(self, prompts: Sequence[str]) -> list[str]:
        from mechintro.generation import generate
        from mechintro.models import tokenizer_of
        from mechintro.prompts import Prompt, encode

        batch = encode(
            tokenizer_of(self.model), [Prompt.chat(p) for p in prompts], **self.template_kwargs
        )
        out = generate(self.model, batch, max_new_tokens=self.max_new_tokens, temperature=0.0)
        return list(out.replies)

    def __call__(self, prompt: str) -> str:
        return self.batch([prompt])[0]


def local_client(
    model: Any, max_new_tokens: int = 256, *, judge_id: str | None = None, **load_kwargs: Any
) -> LocalJudge:
    """A local judge: ``model`` is a loaded TransformerLens model or anything
    :func:`mechintro.models.load_model` takes (``load_kwargs`` go to it). Greedy decoding.

    Example::

        judge = JudgeGrader(local_client("Qwen/Qwen3-8B", 200, device="cuda"))
    """
    from mechintro.models import backend_of, load_model, model_info

    try:
        backend_of(model)
    except TypeError:
        model = load_model(model, **load_kwargs)
    if judge_id is None:
        info = model_info(model)
        judge_id = f"local:{info.name}" + (f"@{info.revision}" if info.revision else "")
    return LocalJudge(model, max_new_tokens, judge_id)
