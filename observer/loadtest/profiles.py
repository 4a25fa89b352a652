"""Load profiles: what a request looks like in each scenario, with realistic length distributions.

A profile is a weighted mix of scenarios. A scenario draws a prompt length and an output length
from clipped lognormal distributions (how real prompt/answer lengths are spread: most short, a
long tail) and builds an OpenAI chat request of that shape:

* ``chat``: a shared system prompt, sometimes earlier turns, a short question; medium answers.
* ``rag``: a shared system prompt plus retrieved documents from a small pool (prefix-cache hits,
  like a real corpus), thousands of tokens of context; short-to-medium answers.
* ``tools``: a ``tools`` array of function schemas, an assistant ``tool_calls`` turn and ``tool``
  result messages; short answers (the next call or a summary).
* ``code``: a file or diff as context; long answers.
* ``adversarial``: short prompts that ask for very long outputs (the requests that hog KV cache).

Output lengths are forced (``max_tokens`` plus vLLM's ``ignore_eos``, as ``vllm bench serve`` and
GuideLLM do) so the offered load does not depend on when the model happens to stop. A FILE.yaml
profile sets the same knobs (see :func:`load_profile`).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from observer.load.population import _FILLER

# Prompt text is sliced out of one pseudo-random corpus: building a 4,000-token RAG prompt word by
# word costs about a millisecond, which at hundreds of requests per second would be the driver's
# own bottleneck. A random offset keeps prompts distinct (no accidental prefix-cache hits); a
# shared prefix is the slice at an offset fixed by its id (deliberate hits, like a system prompt).
_CORPUS = " ".join(random.Random(20240607).choices(_FILLER, k=120_000))
CHARS_PER_TOKEN = 4


def synth_text(tokens: int, rng: random.Random, prefix_id: str = "") -> str:
    """About ``tokens`` tokens of text (4 characters each)."""
    size = min(max(1, tokens) * CHARS_PER_TOKEN, len(_CORPUS))
    span = len(_CORPUS) - size
    offset = _prefix_offset(prefix_id, span) if prefix_id else rng.randrange(span + 1)
    return _CORPUS[offset : offset + size]


@cache
def _prefix_offset(prefix_id: str, span: int) -> int:
    return random.Random(prefix_id).randrange(span + 1)


KINDS = ("chat", "rag", "tools", "code", "adversarial")


@dataclass(frozen=True)
class Lengths:
    """Clipped lognormal token count: ``median`` and ``sigma`` of the log, within [lo, hi]."""

    median: float
    sigma: float
    lo: int
    hi: int

    def draw(self, rng: random.Random) -> int:
        if self.sigma == 0:
            return int(min(max(self.median, self.lo), self.hi))
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(max(value, self.lo), self.hi))

    @classmethod
    def parse(cls, raw: Any, where: str) -> Lengths:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return cls(float(raw), 0.0, int(raw), int(raw))
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a number or {{median, sigma, min, max}}, got {raw!r}")
        unknown = set(raw) - {"median", "sigma", "min", "max"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            median = float(raw["median"])
            out = cls(
                median,
                float(raw.get("sigma", 0.5)),
                int(raw.get("min", 1)),
                int(raw.get("max", max(1, int(median * 8)))),
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: needs a numeric median (and numeric sigma/min/max)") from None
        if out.median <= 0 or out.sigma < 0 or out.lo < 1 or out.hi < out.lo:
            raise ValueError(f"{where}: need median > 0, sigma >= 0, 1 <= min <= max")
        return out


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    prompt: Lengths
    output: Lengths
    shared_prefixes: int = 1  # distinct shared system prompts / documents (prefix-cache reuse)
    shared_prefix_tokens: int = 0


@dataclass
class Profile:
    name: str
    scenarios: list[tuple[Scenario, float]]
    ignore_eos: bool = True
    temperature: float | None = None
    # Sent with the tools array. "auto" is what apps send; vLLM then needs --enable-auto-tool-choice
    # and a tool parser, else it answers 400 (a finding in itself). "omit" leaves the key out.
    tool_choice: str = "auto"
    _names: list[Scenario] = field(init=False, repr=False)
    _weights: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.scenarios or sum(w for _, w in self.scenarios) <= 0:
            raise ValueError(f"profile {self.name!r}: needs at least one scenario with a positive weight")
        self._names = [s for s, _ in self.scenarios]
        self._weights = [w for _, w in self.scenarios]

    def pick(self, rng: random.Random) -> Scenario:
        return rng.choices(self._names, weights=self._weights, k=1)[0]

    def describe(self) -> dict[str, Any]:
        total = sum(self._weights)
        return {
            "name": self.name,
            "scenarios": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "weight": round(w / total, 4),
                    "prompt_tokens_median": s.prompt.median,
                    "output_tokens_median": s.output.median,
                }
                for s, w in self.scenarios
            ],
        }


# --- built-in scenarios --------------------------------------------------------------------------
# Medians and spreads follow public traces of assistant traffic (ShareGPT-style chat, LMSYS, RAG
# deployments): chat prompts of a few hundred tokens, RAG contexts of a few thousand, code answers
# several times longer than chat answers.
CHAT = Scenario("chat", "chat", Lengths(250, 0.8, 20, 4000), Lengths(200, 0.7, 8, 1500), 1, 120)
RAG = Scenario("rag", "rag", Lengths(3500, 0.4, 1000, 12000), Lengths(250, 0.5, 30, 1000), 16, 1800)
TOOLS = Scenario("tools", "tools", Lengths(1200, 0.4, 400, 6000), Lengths(120, 0.6, 10, 600), 4, 600)
CODE = Scenario("code", "code", Lengths(1000, 0.7, 100, 8000), Lengths(500, 0.6, 40, 3000), 3, 200)
ADVERSARIAL = Scenario(
    "adversarial", "adversarial", Lengths(80, 0.5, 20, 400), Lengths(3000, 0.3, 1500, 6000), 1, 0
)

BUILTIN: dict[str, list[tuple[Scenario, float]]] = {
    "chat": [(CHAT, 1.0)],
    "rag": [(RAG, 1.0)],
    "tools": [(TOOLS, 1.0)],
    "code": [(CODE, 1.0)],
    "mixed": [(CHAT, 0.5), (RAG, 0.2), (TOOLS, 0.1), (CODE, 0.15), (ADVERSARIAL, 0.05)],
}

_SYSTEM = "You are the company assistant. Answer precisely, cite the documents you were given. "
_TOOLS = [
    ("search_tickets", "Search support tickets by text and status", {"query": "string", "status": "string"}),
    ("get_invoice", "Fetch an invoice by its number", {"number": "string"}),
    ("create_jira_issue", "Open an issue in a project", {"project": "string", "title": "string"}),
    ("query_metrics", "Run a PromQL query over a time range", {"promql": "string", "range": "string"}),
    ("send_email", "Send an email to a colleague", {"to": "string", "subject": "string", "body": "string"}),
    ("lookup_employee", "Find an employee's team and manager", {"name": "string"}),
    ("book_meeting_room", "Reserve a room for a time slot", {"room": "string", "start": "string"}),
    ("convert_currency", "Convert an amount between currencies", {"amount": "number", "to": "string"}),
]


def _tool_schema(name: str, description: str, params: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": t, "description": f"the {p}"} for p, t in params.items()},
                "required": list(params),
            },
        },
    }


def _shared(scenario: Scenario, rng: random.Random, tokens: int) -> str:
    prefix_id = f"{scenario.name}-{rng.randrange(max(1, scenario.shared_prefixes))}"
    return synth_text(tokens, rng, prefix_id)


def build_messages(scenario: Scenario, rng: random.Random) -> tuple[dict[str, Any], int, int]:
    """(request body without model/stream, approximate prompt tokens, max_tokens) for one request."""
    prompt_tokens = scenario.prompt.draw(rng)
    max_tokens = scenario.output.draw(rng)
    shared = min(scenario.shared_prefix_tokens, max(0, prompt_tokens - 8))
    own = max(4, prompt_tokens - shared)
    body: dict[str, Any] = {}
    kind = scenario.kind
    if kind == "rag":
        docs = _shared(scenario, rng, shared) if shared else ""
        messages = [
            {"role": "system", "content": _SYSTEM + "Documents:\n" + docs},
            {"role": "user", "content": "Using the documents, answer: " + synth_text(own, rng)},
        ]
    elif kind == "tools":
        tools = [_tool_schema(*t) for t in rng.sample(_TOOLS, rng.randint(3, len(_TOOLS)))]
        schema_tokens = len(json.dumps(tools)) // 4
        name = tools[0]["function"]["name"]
        call_id = f"call_{rng.randrange(1 << 32):08x}"
        rest = max(4, prompt_tokens - schema_tokens)
        messages = [
            {"role": "system", "content": _SYSTEM + (_shared(scenario, rng, min(shared, rest // 2)))},
            {"role": "user", "content": synth_text(max(4, rest // 6), rng)},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps({"query": "open items"})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": synth_text(max(4, rest // 3), rng)},
        ]
        body["tools"] = tools
    elif kind == "code":
        messages = [
            {"role": "system", "content": "You are a senior engineer. " + _shared(scenario, rng, shared)},
            {
                "role": "user",
                "content": "Refactor this module and add tests:\n```python\n"
                + synth_text(own, rng)
                + "\n```",
            },
        ]
    elif kind == "adversarial":
        messages = [
            {
                "role": "user",
                "content": "Write an exhaustive, never-ending report; repeat every section in full detail. "
                + synth_text(own, rng),
            }
        ]
    else:  # chat
        messages = [{"role": "system", "content": _SYSTEM + _shared(scenario, rng, shared)}]
        if rng.random() < 0.3 and own > 60:  # a follow-up question with the earlier turn
            messages += [
                {"role": "user", "content": synth_text(own // 3, rng)},
                {"role": "assistant", "content": synth_text(own // 3, rng)},
            ]
            own = own // 3
        messages.append({"role": "user", "content": synth_text(own, rng)})
    body["messages"] = messages
    body["max_tokens"] = max_tokens
    return body, prompt_tokens, max_tokens


def load_profile(spec: str) -> Profile:
    """A built-in profile name, or a YAML file::

    name: support-bot
    ignore_eos: true          # force output lengths (default true)
    scenarios:
      - kind: chat            # chat | rag | tools | code | adversarial
        weight: 0.7
        prompt_tokens: {median: 300, sigma: 0.8, min: 20, max: 4000}
        output_tokens: {median: 150, sigma: 0.6, min: 5, max: 1000}
        shared_prefixes: 1
        shared_prefix_tokens: 200
      - kind: rag
        weight: 0.3
        prompt_tokens: 4000   # a number = always this many
        output_tokens: 200
    """
    if spec in BUILTIN:
        return Profile(spec, BUILTIN[spec])
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml") or not path.exists():
        known = "|".join(BUILTIN)
        raise ValueError(f"--profile: {spec!r} is neither a built-in profile ({known}) nor a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("scenarios"), list):
        raise ValueError(f"{path}: needs a `scenarios` list")
    unknown = set(raw) - {"name", "ignore_eos", "temperature", "tool_choice", "scenarios"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    scenarios: list[tuple[Scenario, float]] = []
    for i, item in enumerate(raw["scenarios"]):
        where = f"{path}: scenarios[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping")
        extra = set(item) - {
            "kind",
            "name",
            "weight",
            "prompt_tokens",
            "output_tokens",
            "shared_prefixes",
            "shared_prefix_tokens",
        }
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)}")
        kind = item.get("kind", "chat")
        if kind not in KINDS:
            raise ValueError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        base = {"chat": CHAT, "rag": RAG, "tools": TOOLS, "code": CODE, "adversarial": ADVERSARIAL}[kind]
        try:
            weight = float(item.get("weight", 1.0))
            scenario = Scenario(
                name=str(item.get("name", kind)),
                kind=kind,
                prompt=Lengths.parse(item["prompt_tokens"], f"{where}.prompt_tokens")
                if "prompt_tokens" in item
                else base.prompt,
                output=Lengths.parse(item["output_tokens"], f"{where}.output_tokens")
                if "output_tokens" in item
                else base.output,
                shared_prefixes=int(item.get("shared_prefixes", base.shared_prefixes)),
                shared_prefix_tokens=int(item.get("shared_prefix_tokens", base.shared_prefix_tokens)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc) if str(exc).startswith(str(path)) else f"{where}: {exc}") from None
        if weight < 0:
            raise ValueError(f"{where}: weight must be >= 0")
        scenarios.append((scenario, weight))
    temperature = raw.get("temperature")
    tool_choice = str(raw.get("tool_choice", "auto"))
    if tool_choice not in ("auto", "none", "required", "omit"):
        raise ValueError(f"{path}: tool_choice must be auto, none, required or omit")
    return Profile(
        str(raw.get("name", path.stem)),
        scenarios,
        ignore_eos=bool(raw.get("ignore_eos", True)),
        temperature=float(temperature) if temperature is not None else None,
        tool_choice=tool_choice,
    )
