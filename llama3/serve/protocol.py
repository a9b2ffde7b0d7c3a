"""OpenAI request bodies as pydantic models, and their translation to `SamplingParams`.

Every field the server honours is declared; an undeclared field is refused with a 400 naming it
(`extra="forbid"`), and a declared OpenAI field the server cannot honour (best_of > n,
suffix) is refused unless it holds its no-op value. `tools` / `tool_choice` /
`parallel_tool_calls` are honoured (llama3.tools): `ToolPlan` says what the prompt offers, how
the answer is parsed and which constraint forces a call. Nothing is silently ignored.
Defaults are OpenAI's (temperature 1, top_p 1; completions stop after 16 tokens).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from ..errors import InvalidRequestError
from ..generation.params import SamplingParams
from ..structured.spec import GuidedDecoding
from ..tools.choice import ToolPlan, tool_plan
from .guided import GuidedFields

#: OpenAI's own caps, kept so clients get the limits they expect
MAX_N = 16
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20


def _check_text(v: Any) -> Any:
    """JSON may carry lone surrogates (\\ud800) that no tokenizer can encode: refuse them here."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "text contains an unpaired UTF-16 surrogate; send valid Unicode"
            ) from None
    elif isinstance(v, list):
        for x in v:
            _check_text(x)
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str

    _text = field_validator("text")(_check_text)


class FunctionCall(_Strict):
    name: StrictStr
    #: a JSON object as a string (OpenAI's shape); an object is accepted too
    arguments: StrictStr | dict[str, Any] = "{}"


class ToolCallIn(_Strict):
    id: StrictStr | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    #: accepted on tool results only (it names the call being answered)
    tool_call_id: str | None = None
    #: an assistant turn that called tools (content may then be null)
    tool_calls: list[ToolCallIn] | None = None

    _content = field_validator("content")(_check_text)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class _SamplingFields(_Strict, GuidedFields):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: StrictInt = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    logit_bias: dict[str, float] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    #: vLLM's extension: generate max_tokens tokens whatever the model's stop tokens say
    ignore_eos: StrictBool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return _check_text(v)

    def check(self) -> None:
        """Cross-field rules pydantic cannot express on one field."""
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true",
                "set stream to true or drop stream_options",
                param="stream_options",
            )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(
        self,
        *,
        max_tokens: int | None,
        logprobs: int | None,
        vocab_size: int,
        choice: int = 0,
        prompt_logprobs: bool = False,
    ) -> SamplingParams:
        bias = None
        if self.logit_bias:
            bias = {}
            for k, v in self.logit_bias.items():
                try:
                    tid = int(k)
                except ValueError:
                    tid = -1
                if not 0 <= tid < vocab_size:
                    raise InvalidRequestError(
                        f"logit_bias key {k!r} is not a token id of this model (0..{vocab_size - 1})",
                        "map token ids (as strings) to numbers in [-100, 100]",
                        param="logit_bias",
                    )
                bias[tid] = v
        seed = self.seed
        if seed is not None and choice:
            # choice j of n gets its own stream, still reproducible from the request's seed
            seed = (seed + choice) % 2**63
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            logit_bias=bias,
            seed=seed,
            stop=stop,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            echo=prompt_logprobs,
            guided=self.guided_decoding(),
        )


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    # OpenAI fields accepted only with their no-op values
    store: Literal[False] | None = None

    _plan: ToolPlan | None = PrivateAttr(None)

    @property
    def tool_plan(self) -> ToolPlan:
        if self._plan is None:
            self._plan = tool_plan(self.tools, self.tool_choice, self.parallel_tool_calls)
        return self._plan

    def guided_decoding(self) -> GuidedDecoding | None:
        asked = super().guided_decoding()
        plan = self.tool_plan
        if not plan.forced:
            return asked
        if asked is not None:
            raise InvalidRequestError(
                f"tool_choice {plan.choice!r} forces a tool call, which cannot be combined with "
                "response_format or guided_*",
                'drop one of them, or use tool_choice "auto"',
                param="tool_choice",
            )
        return plan.guided()

    def check(self) -> None:
        super().check()
        self.guided_decoding()  # tools / tool_choice errors are 400s before anything runs
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError(
                "top_logprobs needs logprobs set to true",
                "set logprobs to true",
                param="top_logprobs",
            )
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise InvalidRequestError(
                "max_tokens and max_completion_tokens disagree",
                "send only max_completion_tokens",
                param="max_completion_tokens",
            )
        for i, m in enumerate(self.messages):
            if m.tool_call_id is not None and m.role != "tool":
                raise InvalidRequestError(
                    f"messages[{i}].tool_call_id is only allowed on tool messages",
                    "drop tool_call_id",
                    param=f"messages.{i}.tool_call_id",
                )
            if m.tool_calls is not None and m.role != "assistant":
                raise InvalidRequestError(
                    f"messages[{i}].tool_calls is only allowed on assistant messages",
                    "drop tool_calls",
                    param=f"messages.{i}.tool_calls",
                )
            if m.content is None and not m.tool_calls:
                raise InvalidRequestError(
                    f"messages[{i}].content is missing",
                    "give each message text content",
                    param=f"messages.{i}.content",
                )

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(16, ge=1)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: StrictBool = False
    # OpenAI fields accepted only with their no-op values
    best_of: StrictInt | None = Field(None, ge=1, le=MAX_N)
    suffix: None = None

    _prompt = field_validator("prompt")(_check_text)

    def check(self) -> None:
        super().check()
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError(
                "best_of other than n is not supported",
                "drop best_of, or set it equal to n",
                param="best_of",
            )
        if isinstance(self.prompt, list) and not self.prompt:
            raise InvalidRequestError(
                "prompt is an empty list", "give at least one prompt", param="prompt"
            )

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts: strings or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TokenizeRequest(_Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool = True

    _prompt = field_validator("prompt")(_check_text)


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[StrictInt]
