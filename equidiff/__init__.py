"""equidiff: invariant sets of neural networks, sampled with diffusion priors (thesis companion)."""

from .objectives import Objective, from_function, logits, probabilities, class_logit, class_probability, lowpassed
from .invariants import InvariantConfig, InvariantResult, IdentityPrior, find_invariants, iterate_invariants

__version__ = "0.1.0"
