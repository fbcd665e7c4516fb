"""An excluded site's reason is short: the grouped summary without cell values, never a
traceback, whatever the size of the site's problem list or of Flower's error reply."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from unicon_core.data import SiteValidationError, open_site
from unicon_core.federation.exclusions import (
    MAX_REASON_CHARS,
    exclusion_info,
    exclusion_reason,
    short_reason,
)
from unicon_core.federation.protocol import InfoKey, Status


def _error(make_cohort: Callable[..., Path], n: int) -> SiteValidationError:
    with pytest.raises(SiteValidationError) as info:
        open_site(make_cohort(n=n, zero_times=(16, 120, 250)))
    return info.value


def test_reason_for_invalid_data_is_the_value_free_summary(
    make_cohort: Callable[..., Path],
) -> None:
    # Prepare: 5,000 non-numeric cells, 3 zero times, empty ages, pandas' index
    error = _error(make_cohort, 5000)
    assert len(error.problems) > 5000
    # Execute
    reason = exclusion_reason(error)
    # Assert
    assert len(reason) <= MAX_REASON_CHARS
    assert reason.startswith("invalid data: 5008 problems in 4 groups\n")
    assert "time: 3 out-of-range values (rows 17, 121, 251)" in reason
    assert "smoker: 5000 non-numeric values" in reason
    assert "'no'" not in reason and "'yes'" not in reason and "Traceback" not in reason
    assert str(error.site_dir) not in reason  # a path on the site's machine stays there


def test_reason_is_bounded_for_any_error() -> None:
    reason = exclusion_reason(ValueError("x" * 10_000), limit=300)
    assert len(reason) == 300 and reason.startswith("ValueError: xxx") and reason.endswith("…")


def test_info_record_names_the_site_and_status(make_cohort: Callable[..., Path]) -> None:
    info = exclusion_info("hospital_b", _error(make_cohort, 20))
    assert info[InfoKey.SITE.value] == "hospital_b"
    assert info[InfoKey.STATUS.value] == Status.INVALID_DATA.value == "invalid-data"
    assert info[InfoKey.REASON.value].startswith("invalid data: ")


def test_short_reason_strips_a_remote_traceback_from_a_flower_error() -> None:
    # Prepare: what Flower's simulation puts in an error reply (Ray's remote traceback around
    # ClientAppException around the original message), grown to 700k characters
    frames = "".join(
        f'  File "/site-packages/mod{i}.py", line {i}, in fn\n    rows = load(manifest)\n'
        for i in range(8000)
    )
    text = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run()\n"
        f"Traceback (most recent call last):\n{frames}"
        "flwr.clientapp.client_app.ClientAppException: \n"
        "Exception ClientAppException occurred. Message: site /data/b has 2 problems in 1 group:"
        "\n  - label: 2 out-of-range values (rows 1, 4)'>"
    )
    assert len(text) > 500_000
    # Execute
    reason = short_reason(text)
    # Assert
    assert reason == "site /data/b has 2 problems in 1 group:\n  - label: 2 out-of-range values " \
        "(rows 1, 4)"


def test_short_reason_drops_frames_of_a_plain_traceback_and_bounds_the_rest() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "a.py", line 3, in f\n'
        "    g()\n"
        "ValueError: bad site\n" + "y" * 5000
    )
    reason = short_reason(text, limit=200)
    assert reason.startswith("ValueError: bad site\n") and len(reason) == 200
    assert 'File "' not in reason
