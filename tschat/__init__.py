"""Run a llama.cpp chat model behind TorchServe: settings, process control and API clients."""

__version__ = "0.1.0"
