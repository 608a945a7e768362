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
