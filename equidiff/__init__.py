"""equidiff: invariant sets of neural networks, sampled with diffusion priors (thesis companion)."""

import warnings as _warnings

# diffusers and huggingface_hub import tqdm.auto, which in a Jupyter kernel without ipywidgets warns
# "IProgress not found" on stderr — into every chapter of the book. The project's own progress bars
# are text bars (and off in the notebooks), so the widget is not needed.
_warnings.filterwarnings("ignore", message="IProgress not found")

from equidiff.core.objectives import Objective, from_function, logits, probabilities, class_logit, class_probability, lowpassed
from equidiff.core.invariants import InvariantConfig, InvariantResult, find_invariants, iterate_invariants
from equidiff.core.priors import IdentityPrior
from equidiff.core.wrap import InputConvention, WrappedModel, layer_channel, wrap_model

__version__ = "0.1.0"
