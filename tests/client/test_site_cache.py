"""A site is opened (and validated) once per process until one of its files changes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from client import site_runner
from tests.unicon_core.data.sites import cls_site, read_rows
from unicon_core.data import SiteValidationError


def test_reopens_only_when_a_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: count real opens
    from unicon_core import data
    from unicon_core.data import site as site_module

    monkeypatch.setattr(site_module, "_VALIDATED", {})
    monkeypatch.setattr(site_module, "_BY_SEED", {})

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
    # another seed is another Site (its own seed and evaluation memo), not another validation
    other = site_runner.open_cached(site_dir, None, 1)
    assert other is not first and other.seed == 1 and first.seed == 0 and len(calls) == 1
    assert other.rows == first.rows and other.cache is first.cache and other.memo is not first.memo
    assert site_runner.open_cached(site_dir, None, 1) is other
    # the site's own spec is the same entry; another spec goes through open_site's check
    assert site_runner.open_cached(site_dir, first.task_spec, 0) is first and len(calls) == 1
    wrong = dataclasses.replace(first.task_spec, num_classes=3)
    with pytest.raises(SiteValidationError):
        site_runner.open_cached(site_dir, wrong, 0)
    assert len(calls) == 2
    # an image rewritten (new size and mtime) makes it validate again and find the problem
    image = site_dir / read_rows(site_dir)[2]["image"]
    image.write_bytes(b"not a png")
    os.utime(image, ns=(1, 1))
    with pytest.raises(SiteValidationError, match="row 3"):
        site_runner.open_cached(site_dir, None, 1)
    assert len(calls) == 3
