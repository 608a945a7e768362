"""prosv-jax: steering vectors for LLMs in JAX/Flax (Bao et al. 2026, \"Towards Steering without Sacrifice\")."""

import os

# prosv-jax runs without PyTorch by design: silence transformers' advisory "PyTorch was not found" line (and only
# its advisory warnings), unless the user set the variable.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
