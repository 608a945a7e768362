import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def concept10_split(tmp_path_factory) -> Path:
    """The bundled concept10 split written out as a folder in AxBench's layout (for tests that copy or edit it)."""
    from prosv_jax.data.bundled import write_concept10_split

    return Path(write_concept10_split(tmp_path_factory.mktemp("concept10")))


@pytest.fixture(scope="session")
def real_models_cache(tmp_path_factory):
    """name -> the converted folder of a known real model, converted once per session into one cache folder
    (also handed to subprocesses through PROSV_JAX_CACHE by the tests that run the CLI)."""
    cache = tmp_path_factory.mktemp("real-models-cache")

    def folder(name: str) -> str:
        from prosv_jax.models.sources import resolve_model_dir

        previous = os.environ.get("PROSV_JAX_CACHE")
        os.environ["PROSV_JAX_CACHE"] = str(cache)
        try:
            return resolve_model_dir(name)
        finally:
            if previous is None:
                del os.environ["PROSV_JAX_CACHE"]
            else:
                os.environ["PROSV_JAX_CACHE"] = previous

    folder.root = str(cache)
    return folder


_SKIPS: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPS.append(f"{report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}")


def pytest_sessionfinish(session, exitstatus):
    """Under PROSV_JAX_STRICT_SKIPS=1, a skip whose reason is not listed in tests/allowed_skips.txt fails the run."""
    if os.environ.get("PROSV_JAX_STRICT_SKIPS") != "1" or not _SKIPS:
        return
    with open(os.path.join(os.path.dirname(__file__), "allowed_skips.txt")) as f:
        allowed = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    unexplained = [s for s in _SKIPS if not any(reason in s for reason in allowed)]
    if unexplained:
        print("\nskipped without a reason listed in tests/allowed_skips.txt:\n  " + "\n  ".join(unexplained))
        session.exitstatus = 1
