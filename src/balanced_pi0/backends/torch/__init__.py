"""pi0 in PyTorch: ``pi0.Pi0`` (model), ``convert`` (openpi JAX params <-> torch state_dict).

Modules: ``siglip`` (vision tower), ``gemma`` (the two-expert mixture of
transformers), ``pi0`` (embeddings, flow matching, sampling), ``convert``.
"""
