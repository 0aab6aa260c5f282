"""Suite-wide rules: every test starts from seeded RNGs, and in CI a skipped test is a failure.

Seeding. Tests that draw from the global RNGs (torch, numpy, `random`) would otherwise see values
that depend on which tests ran before them (test order, `-k`, `-x`): each test, and each module's
fixtures, start from the same seeds.

No silent skips. A test skipped because something it needs is missing (an import that failed, a
shared data file not found, a CPU feature) passes unnoticed, so in CI (`CI` set to a true value,
or `VREASON_NO_SKIP=1`) every skip is reported as a failure, except for tests whose need CI
cannot meet by construction, listed in `SKIP_ALLOWED` by marker with the condition under which
their skip is accepted. `VREASON_NO_SKIP=0` turns the rule off.
"""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

SEED = 0


def _no_gpu() -> bool:
    return not torch.cuda.is_available()


# marker -> (why CI may skip it, whether the skip is accepted on this machine). Reviewed list:
# add a marker here only for a need no CI machine of this project can meet.
SKIP_ALLOWED = {
    "cuda": ("runs CUDA kernels on a GPU; CI machines have none", _no_gpu),
    "no_gpu": ("checks what happens without a GPU; a machine with one cannot", torch.cuda.is_available),
}


def pytest_configure(config):
    for name, (why, _) in SKIP_ALLOWED.items():
        config.addinivalue_line("markers", f"{name}: {why} (its skip is accepted in CI)")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def skips_fail() -> bool:
    """Whether a skip is a failure here: VREASON_NO_SKIP decides when set, else CI does."""
    explicit = os.environ.get("VREASON_NO_SKIP")
    if explicit is not None:
        return _truthy(explicit)
    return _truthy(os.environ.get("CI"))


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def _seeded_module():
    """Module-scoped fixtures (autouse fixtures of a scope run before the others) see seeded RNGs."""
    seed_everything()


@pytest.fixture(autouse=True)
def _seeded_test():
    seed_everything()


def _skip_accepted(item) -> bool:
    for name, (_, accepted) in SKIP_ALLOWED.items():
        if item.get_closest_marker(name) is not None and accepted():
            return True
    return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not skips_fail() or _skip_accepted(item):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI, where every skip fails (tests/conftest.py; allowed markers: "
                       f"{', '.join(sorted(SKIP_ALLOWED)) or 'none'}): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module skipped whole at import (`importorskip` or `skip(allow_module_level=True)`).
    outcome = yield
    report = outcome.get_result()
    if report.skipped and skips_fail():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"module skipped in CI, where every skip fails (tests/conftest.py): {reason}"
