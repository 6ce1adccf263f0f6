"""The ODE–SDE gap chapter (``notebooks/ode_sde_gap.ipynb``; Deveney et al., arXiv:2311.15996).

- :mod:`.published`: the digest's published targets (the released ``W2^2`` table as printed,
  the gap reductions, the linear-Gaussian reference values), for checks only;
- :mod:`.retrained`: the experiment retrained: twelve potential networks in one compiled
  program, their samplers on the paper's grid and their gaps.

The released histograms themselves are read by :mod:`odesde.released`; the exact
linear-Gaussian bound is :mod:`odesde.linear_gap`.
"""
