"""Test helpers shipped to users.

- :class:`DeciderSpecification` — ``given(events).when(command).then(events)`` for deciders.
- :class:`SagaSpecification` — ``given(events).when(event).then(reaction)`` for sagas, and
  :func:`recorded` to make up stored events.
- :mod:`chronik.testing.contract` — the store contract suite every backend passes
  (needs pytest).
"""

from chronik.testing.sagas import SagaSpecification, recorded
from chronik.testing.spec import DeciderSpecification

__all__ = ["DeciderSpecification", "SagaSpecification", "recorded"]
