"""Test helpers shipped to users.

- :class:`DeciderSpecification` — ``given(events).when(command).then(events)`` for deciders.
- :mod:`chronik.testing.contract` — the store contract suite every backend passes
  (needs pytest).
"""

from chronik.testing.spec import DeciderSpecification

__all__ = ["DeciderSpecification"]
