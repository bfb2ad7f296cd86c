"""Test tiers: plain unit tests need no Ray; `ray_local` is one local Ray for the whole session
(2 CPUs, no dashboard), the way Ray's own python/ray/tests/conftest.py sets it up small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from orchestrator.run.ray_local import start_local_ray

    started = start_local_ray(num_cpus=2, num_gpus=0)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def write_spec(tmp_path):
    """Writes a spec (YAML text) to a temp file and returns its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def pytest_collection_modifyitems(items):
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True, scope="session")
def _quiet_env():
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    yield


@pytest.fixture(scope="session")
def analysis_results(ray_local, tmp_path_factory):
    """Real small runs for the analysis and notebook tests, made once (see tests/analysis_runs.py)."""
    from tests.analysis_runs import real_runs

    return real_runs(tmp_path_factory.mktemp("results"))
