"""API clients of TorchServe over one HTTP transport: inference, management, keys, metrics."""
