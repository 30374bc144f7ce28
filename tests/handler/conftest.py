"""The handler loaded once with the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_harness import ROOT, Harness, default_gguf


def load_handler(
    model_dir: Path, handler: dict[str, object] | None = None, **config: object
) -> Harness:
    """A handler instance loaded with the default model, as a TorchServe worker would load it."""
    import llama_cpp_handler
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    gguf = model_dir / "model.gguf"
    if not gguf.exists():
        gguf.symlink_to(default_gguf())
    metrics = MetricsCacheYamlImpl(
        config_file_path=str(ROOT / "tschat" / "ops" / "torchserve_metrics.yaml")
    )
    metrics.initialize_cache()
    yaml_config = {
        **config,
        "handler": {
            "model_path": "model.gguf",
            "n_ctx": 1024,
            "n_threads": 2,
            "seed": 42,
            **(handler or {}),
        },
    }
    context = Context(
        "smollm2",
        str(model_dir),
        {},
        8,
        None,
        "0.12.0",
        metrics=metrics,
        model_yaml_config=yaml_config,
    )
    handler = llama_cpp_handler.LlamaCppHandler()
    handler.initialize(context)
    return Harness(handler, context)


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    """Dynamic batching (batch size 8)."""
    return load_handler(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def continuous(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    """Continuous batching (up to 8 running requests)."""
    return load_handler(tmp_path_factory.mktemp("model"), continuousBatching=True)
