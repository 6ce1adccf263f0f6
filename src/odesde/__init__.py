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
- :mod:`odesde.linear_gap`: the exact ODE–SDE gap and its bounds for linear-Gaussian scores.
- :mod:`odesde.released`: the authors' released artefacts of the ODE–SDE paper, read safely.

Above them (``src/odesde/README.md``): :mod:`odesde.studies`, one study per chapter, and
:mod:`odesde.companion`, the machinery that runs, checks and publishes the book; below them,
:mod:`odesde.utils`. A layer never imports one above it.
"""

import jax

# Every exact computation in the book is float64 (DESIGN.md, Conventions).
jax.config.update("jax_enable_x64", True)

from . import (  # noqa: E402
    control, flow, fokker_planck, fp_grid, gaussian, linear_gap, metrics, nets, released,
    samplers, sde, spectra, targets, training,
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
    "grid_w2_squared", "linear_gap", "log_density_fp_residual", "metrics", "nets", "ode_log_density",
    "released", "sample", "samplers", "score_fpe_residual", "sde", "solve_fp", "spectra", "targets",
    "train", "train_control", "training", "w2_table", "w2_to_data",
]
