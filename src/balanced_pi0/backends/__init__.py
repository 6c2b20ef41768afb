"""Model backends: pi0 in JAX (flax nnx) and in PyTorch, one architecture, one parameter meaning."""
