"""The curated public API of `ultra_tasks` stays honest."""

from __future__ import annotations

import ultra_tasks


def test_all_names_exist_and_are_sorted() -> None:
    for name in ultra_tasks.__all__:
        assert hasattr(ultra_tasks, name), name
    assert ultra_tasks.__all__ == sorted(ultra_tasks.__all__)


def test_every_public_member_is_in_all() -> None:
    public = {
        name
        for name, value in vars(ultra_tasks).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("ultra_tasks")
    }
    assert public - {"app"} <= set(ultra_tasks.__all__)


def test_design_contract_names_built_so_far_are_exported() -> None:
    # The rest of the contract (CircuitBreaker, Fallback, DistributedCache, ...) arrives with its issue.
    for name in (
        "CircuitOpenException",
        "ServiceUnavailableException",
        "TimeoutException",
        "submit",
        "JobHandle",
    ):
        assert name in ultra_tasks.__all__
