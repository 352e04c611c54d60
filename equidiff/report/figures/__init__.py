"""The book's figures, one module per chapter; each function returns a matplotlib Figure."""

from equidiff.report.figures.circles import *  # noqa: F401,F403
from equidiff.report.figures.neurons import *  # noqa: F401,F403
from equidiff.report.figures.sae import *  # noqa: F401,F403
from equidiff.report.figures.classifier import *  # noqa: F401,F403
from equidiff.report.figures.applications import *  # noqa: F401,F403
from equidiff.report.figures.world import *  # noqa: F401,F403
from equidiff.report.figures.common import pyplot, save, sample_grid  # noqa: F401
