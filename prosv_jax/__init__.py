"""prosv-jax: steering vectors for LLMs in JAX/Flax (Bao et al. 2026, \"Towards Steering without Sacrifice\")."""

__version__ = "0.1.0"
