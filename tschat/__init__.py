"""Run a llama.cpp chat model behind TorchServe.

``tschat.api`` talks to TorchServe over one HTTP transport; ``tschat.chat`` holds the chat's
conversations, sampling settings, answer in flight and server status; ``tschat.ops`` runs the
server, the model store, the serving registry, packaging and monitoring; ``tschat.bench``
measures. ARCHITECTURE.md at the repository root draws the layers.
"""

__version__ = "0.1.0"
