"""odesde: the JAX core of a companion book to the Fokker–Planck view of score-based diffusion.

Modules, one idea each:

- :mod:`odesde.sde`: forward SDEs with linear drift (VP in both conventions, VE, OU).
- :mod:`odesde.targets`: data distributions with exact noised marginals and scores.
- :mod:`odesde.fokker_planck`: the score and log-density Fokker–Planck residuals.
- :mod:`odesde.nets`, :mod:`odesde.training`: score and potential networks, DSM and
  FP-regularised training.
- :mod:`odesde.flow`: the adaptive probability-flow ODE and its likelihood.
- :mod:`odesde.metrics`: Wasserstein distances, grid norms, NLL, Jacobian asymmetry.
- :mod:`odesde.figures`, :mod:`odesde.checks`, :mod:`odesde.published`: the book's plots,
  checks and published targets; :mod:`odesde.pipeline`, :mod:`odesde.cli`: ``odesde run``.
"""

import jax

# Every exact computation in the book is float64 (DESIGN.md, Conventions).
jax.config.update("jax_enable_x64", True)

from . import fokker_planck, flow, metrics, nets, sde, targets, training  # noqa: E402
from .fokker_planck import log_density_fp_residual, score_fpe_residual  # noqa: E402
from .metrics import grid_w2_squared  # noqa: E402
from .nets import PotentialMLP, ScoreMLP  # noqa: E402
from .sde import OUSDE, SDE, VESDE, VPSDE  # noqa: E402
from .targets import GaussianMixture, TwoIntervals, UniformBoxes  # noqa: E402
from .training import train  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture", "OUSDE", "PotentialMLP", "SDE", "ScoreMLP", "TwoIntervals",
    "UniformBoxes", "VESDE", "VPSDE", "flow", "fokker_planck", "grid_w2_squared",
    "log_density_fp_residual", "metrics", "nets", "score_fpe_residual", "sde", "targets",
    "train", "training",
]
