"""Test configuration: hypothesis profiles and shared fixtures.

``HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) draws more examples than the default
``dev`` profile used for quick local runs.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# the staged/dense cost table (sekron.ops.cost_table) stays in memory during tests: no
# file is written under the user's cache directory
os.environ["SEKRON_COST_CACHE"] = "off"

settings.register_profile(
    "dev",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
