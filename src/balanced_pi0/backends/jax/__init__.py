"""pi0 in JAX / flax nnx: SigLIP + PaliGemma with the action expert, openpi parameter names."""
