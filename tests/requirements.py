"""What a test needs from the install: skipped where it is missing, a failure under CI.

``make test`` installs everything the suite needs (helm, the TorchServe extra, recbole's
MovieLens-100K). A developer without one of them gets a skip that says how to install it; CI
(``CI=true``) gets a failure instead, so a broken install step cannot hide behind a green run of
skipped tests.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as CI sets it)."""
    return os.environ.get("CI") == "true"


def require(condition: object, what: str) -> None:
    """Go on when ``condition`` holds; otherwise skip, or fail under ``CI=true``.

    Works in a test, a fixture and at module level (then the whole module is skipped, or fails to
    collect under CI).

    Args:
        condition: what the test needs is there (any truthy value).
        what: what is missing and how to install it, shown in the skip or failure.
    """
    if condition:
        return
    if in_ci():
        pytest.fail(f"{what} [required under CI=true: `make test` installs it]", pytrace=False)
    pytest.skip(what, allow_module_level=True)
