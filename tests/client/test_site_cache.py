"""A site is opened (and validated) once per process until one of its files changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client import site_runner
from tests.unicon_core.data.sites import cls_site, read_rows
from unicon_core.data import SiteValidationError


def test_reopens_only_when_a_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: count real opens
    monkeypatch.setattr(site_runner, "_OPENED", {})
    from unicon_core import data

    calls = []
    real_open = data.open_site

    def counting_open(*args, **kwargs):
        calls.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(data, "open_site", counting_open)
    site_dir = cls_site(tmp_path / "s", n=6)
    # Execute / Assert: the second call reuses the validated site
    first = site_runner.open_cached(site_dir, None, 0)
    assert site_runner.open_cached(site_dir, None, 0) is first and len(calls) == 1
    # another seed is another entry
    assert site_runner.open_cached(site_dir, None, 1) is not first and len(calls) == 2
    # an image rewritten (new size and mtime) makes it validate again and find the problem
    image = site_dir / read_rows(site_dir)[2]["image"]
    image.write_bytes(b"not a png")
    os.utime(image, ns=(1, 1))
    with pytest.raises(SiteValidationError, match="row 3"):
        site_runner.open_cached(site_dir, None, 0)
    assert len(calls) == 3
