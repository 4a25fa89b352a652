"""A synthetic company: employees in departments, each with a daily-activity habit and a workload mix.

Deterministic from a seed, so the load generator, the demo and the analytics tests see the same
people. Habits model what adoption analytics look for: a core of daily users (the habit, DAU/MAU
above 0.5 for them), weekly users and occasional ones.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date

# (name, share of headcount)
DEPARTMENTS: tuple[tuple[str, float], ...] = (
    ("engineering", 0.34),
    ("support", 0.18),
    ("sales", 0.14),
    ("marketing", 0.10),
    ("finance", 0.09),
    ("legal", 0.07),
    ("hr", 0.08),
)


@dataclass(frozen=True)
class Habit:
    name: str
    share: float  # share of the population
    workday_activity: float  # probability of being active on a workday
    weekend_activity: float
    requests_weight: float  # relative request volume when active


HABITS: tuple[Habit, ...] = (
    Habit("daily", 0.30, 0.92, 0.15, 5.0),
    Habit("weekly", 0.40, 0.35, 0.05, 2.0),
    Habit("occasional", 0.30, 0.08, 0.01, 1.0),
)


@dataclass(frozen=True)
class Workload:
    """A kind of request: prompt and output length ranges (tokens) and a shared-prefix pool."""

    name: str
    prompt_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    shared_prefixes: int  # distinct shared prefixes (system prompts, RAG documents)
    shared_prefix_tokens: int


WORKLOADS: dict[str, Workload] = {
    "chat": Workload("chat", (40, 400), (30, 300), shared_prefixes=1, shared_prefix_tokens=200),
    "rag": Workload("rag", (2000, 6000), (100, 400), shared_prefixes=12, shared_prefix_tokens=1500),
    "code": Workload("code", (400, 2000), (100, 800), shared_prefixes=3, shared_prefix_tokens=300),
}


@dataclass(frozen=True)
class User:
    user_id: str
    department: str
    habit: Habit

    def active_on(self, day: date, seed: int = 0) -> bool:
        """Whether this user uses the assistant on ``day`` (deterministic per user and day)."""
        digest = hashlib.blake2b(f"{seed}|{self.user_id}|{day.isoformat()}".encode(), digest_size=8).digest()
        roll = int.from_bytes(digest, "little") / 2**64
        p = self.habit.workday_activity if day.weekday() < 5 else self.habit.weekend_activity
        return roll < p


def _pick(rng: random.Random, items: tuple, weights: list[float]):
    return rng.choices(items, weights=weights, k=1)[0]


class Population:
    def __init__(self, size: int, seed: int = 1) -> None:
        if size < 1:
            raise ValueError("population size must be at least 1")
        rng = random.Random(seed)
        self.seed = seed
        self.users: list[User] = []
        dept_names = tuple(d for d, _ in DEPARTMENTS)
        dept_weights = [w for _, w in DEPARTMENTS]
        habit_weights = [h.share for h in HABITS]
        for i in range(size):
            self.users.append(
                User(
                    user_id=f"u{seed:02d}-{i:06d}",
                    department=_pick(rng, dept_names, dept_weights),
                    habit=_pick(rng, HABITS, habit_weights),
                )
            )
        self._weights = [u.habit.requests_weight for u in self.users]

    def pick(self, rng: random.Random) -> User:
        """A user for the next request, heavier habits sending more of them."""
        return rng.choices(self.users, weights=self._weights, k=1)[0]

    def __len__(self) -> int:
        return len(self.users)


_FILLER = (
    "quarterly revenue forecast policy document section customer ticket escalation runbook deployment "
    "kubernetes latency budget contract clause invoice onboarding benefits report summary analysis"
).split()


def synth_text(tokens: int, rng: random.Random, prefix_id: str = "") -> str:
    """About ``tokens`` tokens of text (4 characters each), starting with a shared prefix if given."""
    words: list[str] = []
    length = 0
    target = tokens * 4
    if prefix_id:
        seed_rng = random.Random(prefix_id)
        while length < target:
            w = seed_rng.choice(_FILLER)
            words.append(w)
            length += len(w) + 1
        return " ".join(words)[:target]
    while length < target:
        w = rng.choice(_FILLER)
        words.append(w)
        length += len(w) + 1
    return " ".join(words)[:target]


def build_prompt(workload: Workload, rng: random.Random) -> tuple[str, int]:
    """(prompt text, requested output tokens) for one request of this workload."""
    prompt_tokens = rng.randint(*workload.prompt_tokens)
    shared = min(workload.shared_prefix_tokens, prompt_tokens - 1)
    prefix_id = f"{workload.name}-{rng.randrange(workload.shared_prefixes)}"
    text = synth_text(shared, rng, prefix_id) + " " + synth_text(prompt_tokens - shared, rng)
    return text, rng.randint(*workload.output_tokens)


def parse_mix(spec: str) -> dict[str, float]:
    """``"chat=0.6,rag=0.25,code=0.15"`` -> weights, with a clear error on unknown kinds."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition("=")
        if name not in WORKLOADS:
            raise ValueError(f"unknown workload {name!r} in --mix (known: {', '.join(WORKLOADS)})")
        try:
            mix[name] = float(weight or 1)
        except ValueError:
            raise ValueError(f"weight of {name!r} in --mix must be a number, got {weight!r}") from None
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("--mix needs at least one workload with a positive weight")
    return mix
