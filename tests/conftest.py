"""Test configuration: float64 and strict dtype promotion, as the library promises."""

import os

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import pytest  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# In CI, property tests draw the same examples every run: a failure there is reproducible, and a
# green run is not luck. Locally they explore.
import hypothesis  # noqa: E402

hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if IN_CI:
    hypothesis.settings.load_profile("ci")


def require_in_ci(reason: str):
    """Skip outside CI, fail in CI: for tests that need something only CI guarantees."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def shared_data_dir():
    """The published reference data: ``$ODESDE_DATA`` or ``../shared/data`` beside the repo.

    Returns the folder, or skips the calling test (fails it in CI, where the data must be).
    """
    from pathlib import Path

    candidates = [os.environ.get("ODESDE_DATA"), Path(__file__).parents[2] / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate, "README.md").exists():
            return Path(candidate).resolve()
    require_in_ci(
        "the published reference data are not here: set ODESDE_DATA to the folder holding "
        "cifar10_eigenvalues_2024.npy and deveney/"
    )


@pytest.fixture
def published_data():
    """Fixture form of :func:`shared_data_dir`."""
    return shared_data_dir()
