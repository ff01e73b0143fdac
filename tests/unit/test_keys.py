"""Every Redis key the project writes is named in ultra_tasks/keys.py, and its docstring says how long it
lives: with expiry, or the owner that deletes it (or keeps it to a fixed size) when it has none."""

from __future__ import annotations

from keyspace import families, family_of, key_functions, lifetime

from ultra_tasks import keys


def test_every_key_in_keys_py_says_it_expires_names_its_owner_or_is_a_channel() -> None:
    unsaid = [name for name, fn in key_functions() if not lifetime(fn.__doc__ or "")]
    assert not unsaid, f"keys.py functions whose docstring says neither expiry nor Owner: {unsaid}"


def test_a_key_belongs_to_the_most_specific_family_that_names_it() -> None:
    known = families()
    cases = {
        keys.parked("llm.high"): "parked",
        keys.parked_for("llm.high", "mode"): "parked_for",
        keys.parked_jobs(): "parked_jobs",
        keys.parked_ramp("evt-1"): "parked_ramp",
        keys.job_lease("0b5e"): "job_lease",
        keys.cache_entry("llm", "abc"): "cache_entry",
        keys.breaker("openai")[0]: "breaker",
        keys.breaker_index(): "breaker_index",
    }
    assert {key: getattr(family_of(key, known), "function", None) for key in cases} == cases
    assert family_of("somewhere:else", known) is None
