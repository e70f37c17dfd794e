"""The public API is deliberate: everything exported exists and nothing private leaks."""

from __future__ import annotations

import chronik


def test_exports_exist_and_are_sorted() -> None:
    for name in chronik.__all__:
        assert hasattr(chronik, name), name
    assert sorted(chronik.__all__) == sorted(set(chronik.__all__))


def test_every_error_is_a_chronik_error() -> None:
    errors = [
        getattr(chronik, n)
        for n in chronik.__all__
        if n.endswith(
            ("Error", "Found", "Deleted", "Id", "Large", "Type", "Unavailable", "Url", "Version")
        )
    ]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, Exception)]
    assert len(errors) >= 12
    assert all(issubclass(e, chronik.ChronikError) for e in errors)
    assert issubclass(chronik.StreamNotFound, LookupError)
    assert issubclass(chronik.InvalidStreamId, ValueError)
