"""The controllability chapter's experiments (``notebooks/neural_sde_control.ipynb``), one module each.

Elamvazhuthi, Oymak and Pasqualetti: only the abstract was available, so every experiment here
is the companion's own illustration of the digest's claims (Secs. 4-5, E0-E4, criteria R0-R3),
built on :mod:`odesde.fp_grid` (grid solver, characteristics, grid metrics) and
:mod:`odesde.control` (perturbed scores, controls, training). The notebook stays thin: it picks
parameters, calls these functions, draws and checks.

- :class:`Setup`: the OU process, a target with exact marginals, a grid (1-D or 2-D) and the
  early-stop time.
- :func:`e0_sanity`: exact scores, reverse SDE (grid) and PF-ODE (characteristics), snapshots;
  :func:`e0_sanity_2d` the same in 2-D with POT W2 on samples; :func:`score_profile` the
  score's Lipschitz constant and E4's budgets (one program).
- :func:`e1_sweep`: the score perturbation ``c_k(t) sin(k x)`` of fixed ``L2(p_t)`` size.
- :func:`e2_dsm`: DSM-trained scores per seed, terminal errors against the weighted score error.
- :func:`e3_controls`: width-``d`` piecewise-constant controls (``d`` = 1, 2) against a wide
  baseline, the seeds trained as one stack (:class:`SeedSum`); :func:`decreases` R3's reading of
  a decrease in K.
- :func:`e4_tradeoff`: the disconnected-support budgets (descriptive).
- :func:`solver_convergence`, :func:`w2_against_pot`: checks of the solver and the metrics.
- :func:`ode_particles_with_density`, :func:`particle_l2`, :func:`particle_w2`: the ODE's L2 and
  W2 from quantile particles with the log-Jacobian (they resolve spikes narrower than a cell).

Conventions: the digest's OU process ``dX = -X dt + sqrt(2) dW`` (:func:`ou_process`); the reverse
processes start from the exact ``p_T`` (digest Sec. 3: isolates the drift effect from the
``O(e^{-T})`` prior mismatch, which is reported separately); errors are against the exact
``p_{t_0}`` at the cell centres.

Modules: :mod:`.setting` (the OU process, targets, grid, errors), :mod:`.particles` (the ODE
from quantile particles), :mod:`.e0` ... :mod:`.e4` (one experiment each), :mod:`.solver_checks`.
Independent experiments run in worker threads with :class:`odesde.utils.background.Background`.
"""

from .e0 import (
    PROFILE_BLOCK,
    ScoreProfile,
    e0_sanity,
    e0_sanity_2d,
    emd_w2,
    fine_points,
    forward_snapshots,
    grid_samples,
    score_lipschitz,
    score_profile,
    w2_grid_against_pot_2d,
)
from .e1 import e1_sweep, loglog_slope
from .e2 import LogTimeDSM, e2_dsm, e2_summary
from .e3 import SeedSum, decreases, e3_controls, stack_controls, unstack
from .e4 import e4_tradeoff
from .particles import (
    QUANTILE_CELLS,
    exact_quantiles,
    ode_particles,
    ode_particles_with_density,
    particle_l2,
    particle_w2,
    quantile_levels,
)
from .setting import (
    TARGETS,
    Errors,
    MixtureScore,
    Setup,
    bimodal_mixture,
    bimodal_mixture_2d,
    errors,
    exact_score,
    make_target,
    ode_density,
    ou_process,
    sde_density,
)
from .solver_checks import solver_convergence, spearman, w2_against_pot

__all__ = [
    "TARGETS",
    "ou_process",
    "bimodal_mixture",
    "bimodal_mixture_2d",
    "MixtureScore",
    "exact_score",
    "make_target",
    "Setup",
    "Errors",
    "errors",
    "sde_density",
    "ode_density",
    "QUANTILE_CELLS",
    "quantile_levels",
    "exact_quantiles",
    "ode_particles",
    "ode_particles_with_density",
    "particle_l2",
    "particle_w2",
    "forward_snapshots",
    "score_lipschitz",
    "ScoreProfile",
    "PROFILE_BLOCK",
    "score_profile",
    "fine_points",
    "e0_sanity",
    "grid_samples",
    "emd_w2",
    "e0_sanity_2d",
    "w2_grid_against_pot_2d",
    "e1_sweep",
    "loglog_slope",
    "LogTimeDSM",
    "e2_dsm",
    "e2_summary",
    "SeedSum",
    "stack_controls",
    "unstack",
    "e3_controls",
    "decreases",
    "e4_tradeoff",
    "solver_convergence",
    "w2_against_pot",
    "spearman",
]
