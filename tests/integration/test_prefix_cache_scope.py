"""handler.prefix_cache on a real TorchServe, through the openai SDK: with per_user, a user
learns nothing of another's prompt, neither from cached_tokens nor from the time to the first
token; shared reuses anyone's prompt beginning as before.

Every figure is compared with others of the same run: a long common beginning (about 800
tokens) makes its prefill dominate the time to the first token, cached or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import requests

from tschat.ops import store
from tschat.ops.packaging import PackageOptions, package_model

pytestmark = pytest.mark.integration

SCOPES = ("per_user", "shared")


def beginning(seed: int) -> str:
    """A system prompt of about 800 tokens; another ``seed`` shares none of it."""
    words = ("Policy", "Rule", "Clause", "Article")[seed % 4]
    return " ".join(
        f"{words} {seed * 1000 + i}: the accounts team files invoice {i * 7 + seed} in drawer "
        f"{(i + seed) % 13} and checks it every {i % 5 + 1} days."
        for i in range(28)
    )


SHARED = beginning(1)


@dataclass(frozen=True)
class Answer:
    prompt_tokens: int
    cached_tokens: int
    ttft_ms: float


@pytest.fixture(scope="module")
def scoped(torchserve_server: Any) -> Iterator[dict[str, openai.OpenAI]]:
    """One model per scope, packaged from the default GGUF into the session server's store."""
    gguf = store.default_gguf()
    assert gguf is not None
    settings = torchserve_server.settings
    names = {scope: f"cache-{scope}" for scope in SCOPES}
    for scope, name in names.items():
        options = PackageOptions(prefix_cache=scope)
        for _ in package_model(gguf, name=name, model_store=settings.model_store, options=options):
            pass
        torchserve_server.registry.register(f"{name}.mar", initial_workers=1)
    try:
        for name in names.values():
            torchserve_server.registry.wait_until_ready(name, timeout=240)
        key = torchserve_server.keys.key("inference")
        yield {
            scope: openai.OpenAI(
                base_url=f"{settings.inference_url}/predictions/{name}/1.0/v1", api_key=key
            )
            for scope, name in names.items()
        }
    finally:
        for name in names.values():
            torchserve_server.registry.unregister(name)
            (settings.model_store / f"{name}.mar").unlink()


def ask(client: openai.OpenAI, system: str, question: str, user: str) -> Answer:
    completion = client.chat.completions.create(
        model=str(client.base_url).rstrip("/").split("/")[-3],
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=1,
        temperature=0,
        user=user,
    )
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    timings = (completion.model_extra or {})["timings"]
    return Answer(
        usage.prompt_tokens, int(usage.prompt_tokens_details.cached_tokens or 0), timings["ttft_ms"]
    )


def test_per_user_reveals_nothing_of_another_users_prompt(
    scoped: dict[str, openai.OpenAI],
) -> None:
    client = scoped["per_user"]
    cold = ask(client, beginning(2), "Which drawer?", "carol")
    alice = ask(client, SHARED, "Which drawer holds invoice 15?", "alice")
    alice_again = ask(client, SHARED, "Which drawer holds invoice 29?", "alice")
    bob = ask(client, SHARED, "Which drawer holds invoice 22?", "bob")

    assert min(a.prompt_tokens for a in (cold, alice, bob)) > 750
    assert [a.cached_tokens for a in (cold, alice, bob)] == [0, 0, 0]
    # bob's prompt is prefilled in full: no faster than the cold ones (carol's, and alice's
    # first), beyond their spread...
    assert bob.ttft_ms >= min(cold.ttft_ms, alice.ttft_ms) * 0.5, (bob, cold, alice)
    # ...while a reuse is plain to see in both figures: alice's own beginning, again.
    assert alice_again.cached_tokens > 750
    assert alice_again.ttft_ms < max(cold.ttft_ms, alice.ttft_ms) * 0.25, (alice_again, cold)


def test_shared_reuses_anyones_beginning(
    scoped: dict[str, openai.OpenAI], torchserve_server: Any
) -> None:
    client = scoped["shared"]
    cold = ask(client, beginning(3), "Which drawer?", "carol")
    alice = ask(client, SHARED, "Which drawer holds invoice 15?", "alice")
    question = "Which drawer holds invoice 22?"
    bob = ask(client, SHARED, question, "bob")

    assert cold.cached_tokens == alice.cached_tokens == 0
    # Today's figure: bob's cached tokens are exactly the beginning he shares with alice.
    tokens = [
        requests.post(
            f"{str(client.base_url).rstrip('/')}/tokenize",
            json={
                "messages": [
                    {"role": "system", "content": SHARED},
                    {"role": "user", "content": text},
                ]
            },  # fmt: skip
            headers={"Authorization": f"Bearer {torchserve_server.keys.key('inference')}"},
            timeout=60,
        ).json()["tokens"]
        for text in ("Which drawer holds invoice 15?", question)
    ]
    common = next(i for i, (a, b) in enumerate(zip(*tokens, strict=False)) if a != b)
    assert common > 750
    assert bob.cached_tokens == common
    assert bob.ttft_ms < cold.ttft_ms * 0.25, (bob, cold)
