"""odesde: the JAX core of a companion book to the Fokker–Planck view of score-based diffusion."""

import jax

# Every exact computation in the book is float64 (DESIGN.md, Conventions).
jax.config.update("jax_enable_x64", True)

from . import sde  # noqa: E402
from .sde import SDE, OUSDE, VESDE, VPSDE  # noqa: E402

__version__ = "0.1.0"

__all__ = ["SDE", "OUSDE", "VESDE", "VPSDE", "sde"]
