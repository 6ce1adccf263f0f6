"""odesde: the JAX core of a companion book to the Fokker–Planck view of score-based diffusion.

Modules, one idea each:

- :mod:`odesde.sde`: forward SDEs with linear drift (VP in both conventions, VE, OU).
- :mod:`odesde.gaussian`, :mod:`odesde.spectra`: exact Gaussian theory and eigenvalue spectra.
- :mod:`odesde.samplers`: the six fixed-step samplers for any score function.
- :mod:`odesde.fp_grid`, :mod:`odesde.control`: a Fokker–Planck grid solver, probability-flow
  densities by characteristics, controlled width-d drifts.
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

from . import (  # noqa: E402
    control, flow, fokker_planck, fp_grid, gaussian, metrics, nets, samplers, sde, spectra,
    targets, training,
)
from .control import PiecewiseControl, SinePerturbedScore, train_control  # noqa: E402
from .fp_grid import Grid, ReverseODE, ReverseSDE, ode_log_density, solve_fp  # noqa: E402
from .gaussian import w2_table, w2_to_data  # noqa: E402
from .fokker_planck import log_density_fp_residual, score_fpe_residual  # noqa: E402
from .metrics import grid_w2_squared  # noqa: E402
from .samplers import sample  # noqa: E402
from .nets import PotentialMLP, ScoreMLP  # noqa: E402
from .sde import OUSDE, SDE, VESDE, VPSDE  # noqa: E402
from .targets import GaussianMixture, TwoIntervals, UniformBoxes  # noqa: E402
from .training import train  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture", "Grid", "OUSDE", "PiecewiseControl", "PotentialMLP", "ReverseODE",
    "ReverseSDE", "SDE", "ScoreMLP", "SinePerturbedScore", "TwoIntervals", "UniformBoxes",
    "VESDE", "VPSDE", "control", "flow", "fokker_planck", "fp_grid", "gaussian",
    "grid_w2_squared", "log_density_fp_residual", "metrics", "nets", "ode_log_density",
    "sample", "samplers", "score_fpe_residual", "sde", "solve_fp", "spectra", "targets",
    "train", "train_control", "training", "w2_table", "w2_to_data",
]
from . import control_study  # noqa: E402,F401  (the controllability chapter's experiments)
from . import ode_sde_study  # noqa: E402,F401  (the ODE–SDE gap chapter's retrained experiment)
