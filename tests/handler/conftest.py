"""The handler loaded once with the real default model."""

from __future__ import annotations

import pytest
from worker_harness import ROOT, Harness, default_gguf


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    import llama_cpp_handler

    model_dir = tmp_path_factory.mktemp("model")
    (model_dir / "model.gguf").symlink_to(default_gguf())
    metrics = MetricsCacheYamlImpl(config_file_path=str(ROOT / "tschat" / "torchserve_metrics.yaml"))
    metrics.initialize_cache()
    config = {"handler": {"model_path": "model.gguf", "n_ctx": 1024, "n_threads": 2, "seed": 42}}
    context = Context("smollm2", str(model_dir), {}, 8, None, "0.12.0", metrics=metrics, model_yaml_config=config)
    llama_cpp_handler.handle(None, context)
    return Harness(llama_cpp_handler, context)
