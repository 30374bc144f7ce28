"""llama.cpp's attention kernel: handler.flash_attn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import load_handler
from test_handler import CHAT


def test_packaging_offers_the_engines_modes() -> None:
    import engine

    from tschat.ops.packaging import FLASH_ATTN_MODES

    assert FLASH_ATTN_MODES == tuple(engine.FLASH_ATTN_MODES)


@pytest.mark.parametrize(("written", "mode"), [("off", "off"), ("on", "on"), ("'auto'", "auto")])
def test_a_mode_written_in_yaml_is_the_engines(tmp_path: Path, written: str, mode: str) -> None:
    # A hand-edited model-config.yaml may say a bare off or on, which YAML reads as false/true.
    value = yaml.safe_load(f"flash_attn: {written}")["flash_attn"]
    harness = load_handler(tmp_path, handler={"flash_attn": value})
    try:
        assert harness.handler.engine.describe()["flash_attn"] == mode
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        _, final = harness.run([(CHAT, body)])
        answer = json.loads(final.predictions[0].body)
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        harness.handler.engine.close()


def test_an_unknown_mode_stops_the_load_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flash_attn must be one of auto, on, off; got 'fast'"):
        load_handler(tmp_path, handler={"flash_attn": "fast"})
