"""Operations: the TorchServe process, the model store, serving, packaging, monitoring."""
