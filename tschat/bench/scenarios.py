"""What a load asks: conversations drawn from a seeded, generated corpus (no downloads).

Three scenarios, each a list of :class:`Conversation` (one or more user turns, each with its own
answer cap); the load generator sends the turns of a conversation one after another, re-sending
the whole history (its earlier questions and the server's own answers) each turn:

``distinct``
    One-turn conversations, every prompt different, with a spread of prompt and answer lengths:

    ============  =====  ==========================================================
    kind          share  user message
    ============  =====  ==========================================================
    question      55 %   a question on one of 40 topics, 6 to about 40 words
    passage       30 %   a passage of 40-300 words (log-uniform), then a question
    document      15 %   notes of 150-600 words (log-uniform) to summarise
    ============  =====  ==========================================================

    Each answer's ``max_tokens`` is drawn log-uniformly from [cap/8, cap] (cap 256: 32 to 256
    tokens, median about 90). Conversation ``i`` pairs topic ``i mod 40`` with question form
    ``(i div 40) mod 16``, so any 640 consecutive conversations ask different questions.

``multi-turn``
    Chats of ``turns`` turns: an opening question (a third of them with a passage of 40-150
    words), then follow-ups ("Give an example.", "How does that relate to volcanoes?"). Answer
    caps are drawn log-uniformly from [cap/8, cap/2]; later caps shrink where needed so that a
    whole chat, history included, stays within :data:`CHAT_TOKEN_BUDGET` tokens (estimated
    generously at :data:`TOKENS_PER_WORD` tokens a word).

``shared-prefix``
    Every request the same one-turn prompt with the same cap: the load whose prefill a prefix
    cache skips almost entirely (the benchmark's historical load).

Conversation ``i`` depends only on the scenario, the seed and ``first + i``, so cells that start
at different ``first`` indices send different prompts, and two servers given the same
arguments receive the same first turns.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DISTINCT = "distinct"
MULTI_TURN = "multi-turn"
SHARED_PREFIX = "shared-prefix"
SCENARIOS = (DISTINCT, MULTI_TURN, SHARED_PREFIX)
SEED = 13
DEFAULT_TURNS = 10
CHAT_TOKEN_BUDGET = 1800  # below the 2048 tokens a sequence holds, with room for the template
TOKENS_PER_WORD = 1.6  # generous: this corpus measures about 1.3 with SmolLM2's tokenizer
TOKENS_PER_MESSAGE = 12  # the chat template's markup around each message

DEFAULT_INSTRUCTION = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
)


@dataclass(frozen=True)
class Turn:
    """One user message and the answer cap sent with it."""

    user: str
    max_tokens: int


@dataclass(frozen=True)
class Conversation:
    """User turns, sent one after another, each with the whole history before it."""

    turns: tuple[Turn, ...]

    @property
    def requests(self) -> int:
        return len(self.turns)


TOPICS = (
    "photosynthesis", "the French Revolution", "sourdough bread", "binary search", "volcanoes",
    "the stock market", "jazz", "vaccines", "black holes", "compound interest",
    "the Roman Empire", "machine learning", "bicycle maintenance", "climate change",
    "the immune system", "chess openings", "coffee brewing", "plate tectonics",
    "the printing press", "electric cars", "honeybees", "the water cycle", "public speaking",
    "container shipping", "the human heart", "origami", "solar panels", "marathon training",
    "the Silk Road", "quantum computing", "tea ceremonies", "coral reefs", "password security",
    "the Renaissance", "wind turbines", "sleep", "glaciers", "the internet", "budgeting",
    "lighthouses",
)  # fmt: skip
QUESTIONS = (
    "What is {topic}?",
    "Explain {topic} to a ten-year-old.",
    "Give three surprising facts about {topic}.",
    "Why does {topic} matter today?",
    "Describe {topic} in one paragraph.",
    "What are common misconceptions about {topic}?",
    "Compare {topic} with {other}.",
    "List the main ideas behind {topic}.",
    "Write a short poem about {topic}.",
    "What should a beginner learn first about {topic}?",
    "Summarise the history of {topic}.",
    "How would you teach {topic} in a single lesson?",
    "Write a haiku about {topic}.",
    "What are the pros and cons of {topic}?",
    "Tell a short story in which {topic} plays a part.",
    "Which books or sources would you suggest on {topic}, and why?",
)
OPENERS = (
    "",
    "Quick question. ",
    "I am preparing a talk for my colleagues next week. ",
    "My daughter asked me this at dinner and I did not know what to say. ",
    "For a school project: ",
    "I have been reading about this all afternoon and I am still confused. ",
)
CLOSERS = (
    "",
    " Keep it short.",
    " Please use simple words.",
    " Answer in a few bullet points.",
    " Be as precise as you can, and mention anything that is still debated.",
)
FOLLOW_UPS = (
    "Can you say more about that?",
    "Give an example.",
    "Now explain it more simply.",
    "How does that relate to {other}?",
    "What would an expert add?",
    "Is any of that still debated?",
    "Summarise what we discussed in two sentences.",
    "What is the most common mistake people make here?",
    "Could you put that as a numbered list?",
    "Why is that the case?",
    "What happened next, historically?",
    "Thanks. One more thing: what should I read next?",
)
SUBJECTS = (
    "The committee", "Researchers at the institute", "The old harbour", "Most visitors",
    "The second report", "A small group of farmers", "The city council", "Engineers",
    "The museum's archive", "Several witnesses", "The regional office", "Local teachers",
)  # fmt: skip
VERBS = (
    "recorded", "questioned", "described", "rebuilt", "measured", "compared", "ignored",
    "studied", "published", "doubled", "replaced", "discussed",
)  # fmt: skip
OBJECTS = (
    "the water levels", "the early drafts", "the quarterly figures", "the northern road",
    "the winter harvest", "the original design", "the survey results", "the ferry timetable",
    "the school budget", "the damaged bridge", "the new regulations", "the stone walls",
)  # fmt: skip
TAILS = (
    "after the storm", "over three years", "with great care", "before anyone noticed",
    "in the spring", "despite the cost", "for the first time", "without much success",
    "at the request of the mayor", "while the river was rising", "", "",
)  # fmt: skip


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def answer_cap(rng: random.Random, low: float, high: float) -> int:
    """An answer cap drawn log-uniformly from [low, high], at least 1.

    >>> rng = random.Random(1)
    >>> caps = [answer_cap(rng, 32, 256) for _ in range(1000)]
    >>> min(caps) >= 32 and max(caps) <= 256
    True
    """
    return max(1, round(_log_uniform(rng, max(low, 1.0), max(high, 1.0))))


def passage(rng: random.Random, words: int) -> str:
    """Neutral prose of about ``words`` words (whole sentences, at least one)."""
    sentences: list[str] = []
    count = 0
    while count < words or not sentences:
        tail = rng.choice(TAILS)
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        sentence += f" {tail}." if tail else "."
        sentences.append(sentence)
        count += len(sentence.split())
    return " ".join(sentences)


def _rng(scenario: str, seed: int, index: int) -> random.Random:
    return random.Random(f"{scenario}:{seed}:{index}")


def _question(rng: random.Random, index: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    form = QUESTIONS[(index // len(TOPICS)) % len(QUESTIONS)]
    other = rng.choice([t for t in TOPICS if t != topic])
    return rng.choice(OPENERS) + form.format(topic=topic, other=other) + rng.choice(CLOSERS)


def distinct_message(index: int, seed: int = SEED) -> str:
    """The user message of distinct conversation ``index``.

    >>> distinct_message(0) != distinct_message(1)
    True
    >>> distinct_message(7) == distinct_message(7)
    True
    """
    rng = _rng(DISTINCT, seed, index)
    question = _question(rng, index)
    kind = rng.random()
    if kind < 0.55:
        return question
    if kind < 0.85:
        text = passage(rng, round(_log_uniform(rng, 40, 300)))
        return f"Read this passage, then answer the question.\n\n{text}\n\nQuestion: {question}"
    notes = passage(rng, round(_log_uniform(rng, 150, 600)))
    return f"Summarise these notes in a few sentences.\n\n{notes}"


def estimate_tokens(text: str) -> int:
    """A generous estimate of the tokens a message takes, template markup included.

    >>> estimate_tokens("one two three four five")
    20
    """
    return math.ceil(len(text.split()) * TOKENS_PER_WORD) + TOKENS_PER_MESSAGE


def distinct(count: int, *, first: int = 0, cap: int = 256, seed: int = SEED) -> list[Conversation]:
    """``count`` one-turn conversations with different prompts, starting at index ``first``."""
    conversations = []
    for index in range(first, first + count):
        rng = _rng(DISTINCT + "/cap", seed, index)
        turn = Turn(distinct_message(index, seed), answer_cap(rng, cap / 8, cap))
        conversations.append(Conversation((turn,)))
    return conversations


def multi_turn(
    count: int, *, turns: int = DEFAULT_TURNS, first: int = 0, cap: int = 256, seed: int = SEED
) -> list[Conversation]:
    """``count`` chats of ``turns`` turns whose whole history fits CHAT_TOKEN_BUDGET."""
    if turns < 1:
        raise ValueError("a chat has at least one turn")
    conversations = []
    for index in range(first, first + count):
        rng = _rng(MULTI_TURN, seed, index)
        opening = _question(rng, index)
        if rng.random() < 1 / 3:
            opening = f"{passage(rng, round(_log_uniform(rng, 40, 150)))}\n\n{opening}"
        users = [opening]
        topic = TOPICS[index % len(TOPICS)]
        for _ in range(turns - 1):
            other = rng.choice([t for t in TOPICS if t != topic])
            users.append(rng.choice(FOLLOW_UPS).format(other=other))
        caps = [answer_cap(rng, cap / 8, cap / 2) for _ in users]
        # Shrink the answers, last first, until the whole chat fits with its answers.
        spare = CHAT_TOKEN_BUDGET - sum(estimate_tokens(u) + TOKENS_PER_MESSAGE for u in users)
        excess = sum(caps) - spare
        for i in reversed(range(len(caps))):
            if excess <= 0:
                break
            cut = min(excess, caps[i] - 1)
            caps[i] -= cut
            excess -= cut
        if excess > 0:
            raise ValueError(f"{turns} turns do not fit in {CHAT_TOKEN_BUDGET} tokens")
        conversations.append(
            Conversation(tuple(Turn(u, c) for u, c in zip(users, caps, strict=True)))
        )
    return conversations


def shared_prefix(
    count: int, *, prompt: str = DEFAULT_INSTRUCTION, max_tokens: int = 128
) -> list[Conversation]:
    """``count`` one-turn conversations, all the same prompt and cap."""
    return [Conversation((Turn(prompt, max_tokens),))] * count


def build(
    scenario: str,
    requests: int,
    *,
    first: int = 0,
    max_tokens: int = 256,
    turns: int = DEFAULT_TURNS,
    prompt: str = DEFAULT_INSTRUCTION,
    seed: int = SEED,
) -> list[Conversation]:
    """The conversations of ``scenario`` that make about ``requests`` requests.

    Multi-turn rounds up to whole chats of ``turns`` turns; ``max_tokens`` is the cap of every
    answer in shared-prefix and the largest cap drawn in the others.

    >>> [c.requests for c in build(MULTI_TURN, 25, turns=10)]
    [10, 10, 10]
    >>> len(build(DISTINCT, 4)), len({c.turns[0].user for c in build(SHARED_PREFIX, 3)})
    (4, 1)
    """
    if requests < 1 or max_tokens < 1:
        raise ValueError("requests and max_tokens must be at least 1")
    if scenario == DISTINCT:
        return distinct(requests, first=first, cap=max_tokens, seed=seed)
    if scenario == MULTI_TURN:
        chats = math.ceil(requests / max(turns, 1))
        return multi_turn(chats, turns=turns, first=first, cap=max_tokens, seed=seed)
    if scenario == SHARED_PREFIX:
        return shared_prefix(requests, prompt=prompt, max_tokens=max_tokens)
    raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
