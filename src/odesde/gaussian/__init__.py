"""Exact Gaussian theory of the six samplers (Pierret & Galerne, arXiv:2405.14250).

- :mod:`.recursions`: marginal spectra, the exact continuous solutions, the per-step affine
  recursions of each scheme, final variances, trajectories and the closed-form ``W2``;
- :mod:`.tables`: whole tables of ``W2`` errors over schemes, truncation times, grid sizes and
  starts, and the paper's NFE conventions and printed format.
"""

from .recursions import (
    AFFINE_SCHEMES,
    CONTINUOUS,
    HEUN_POINTS,
    ODE_SCHEMES,
    PIERRET_GALERNE,
    SCHEMES,
    SDE_SCHEMES,
    STARTS,
    Start,
    affine_coefficients,
    as_spectrum,
    eigenvalue_errors,
    exact_variance,
    final_variances,
    initial_variance,
    marginal_spectrum,
    step_coefficients,
    w2,
    w2_along_time,
)
from .tables import format_value, nfe_to_points, table_points, w2_table, w2_to_data

__all__ = [
    "AFFINE_SCHEMES", "CONTINUOUS", "HEUN_POINTS", "ODE_SCHEMES", "PIERRET_GALERNE", "SCHEMES",
    "SDE_SCHEMES", "STARTS", "Start", "affine_coefficients", "as_spectrum", "eigenvalue_errors",
    "exact_variance", "final_variances", "format_value", "initial_variance", "marginal_spectrum",
    "nfe_to_points", "step_coefficients", "table_points", "w2", "w2_along_time", "w2_table",
    "w2_to_data",
]
