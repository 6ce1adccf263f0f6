"""The third layer: one study per chapter, what its notebook drives.

A study holds the experiments of one chapter and the published targets it compares against;
it builds on the mathematics (:mod:`odesde` and its modules) and the utilities
(:mod:`odesde.utils`), never on the companion machinery (:mod:`odesde.companion`).

- :mod:`.gaussian_exact_errors`: Pierret & Galerne's published tables and anchors;
- :mod:`.ode_sde_gap`: Deveney et al.'s targets and the retrained experiment;
- :mod:`.score_fpe`: Lai et al.'s score Fokker–Planck study;
- :mod:`.neural_sde_control`: Elamvazhuthi et al.'s controllability experiments E0–E4.
"""
