"""Sagas (process managers): deciders over events that issue commands, with compensation
and durable deadlines.

A :class:`Saga` follows events of some categories, correlates each to a saga instance by a
key taken from the event (``correlate``), and ``react``\\s with a :class:`Reaction`: its own
events (folded by ``evolve`` into its state), commands for aggregates (each with an optional
compensation), deadlines to schedule or cancel, and whether it is complete.

Three workers run it, each safe to kill -9 and restart:

* :class:`SagaRunner` follows the store. For one event it writes, in **one transaction**,
  the saga's own events (appended to the instance's stream ``saga_<name>-<key>``), the
  instance's bookkeeping, the commands to send (in the ``saga_commands``
  outbox, keyed by a command id derived from the triggering event id and the step, so a
  redelivered event issues nothing new), the deadlines, and the checkpoint.
* :class:`CommandDispatcher` executes pending commands in order through a function you give
  (usually a :class:`~chronik.CommandHandler`), inside ``chronik.context`` with the saga's
  correlation id, the trigger as causation and ``command_id`` in every event's metadata. It
  then appends the outcome (``SagaCommandSucceeded``/``SagaCommandRejected``) to the
  instance's stream ``saga_<name>-<key>`` with an event id derived from the command id, and
  marks the command done. After a crash, a command with attempts is first looked up in its
  target stream by ``command_id``: found means executed, so it runs at most once; the
  outcome append is idempotent (same event id, same data).
* :class:`DeadlineWorker` appends ``SagaDeadlineExpired`` for each due deadline (event id
  derived from the deadline id) and deletes it. A deadline cancelled (or superseded) by the
  runner before its expiry is read is ignored.

A rejected forward command, or ``Reaction(compensate=...)``, starts compensation: the
compensations of the completed steps are issued newest first; a step still outstanding is
compensated when it succeeds. An instance ends in exactly one terminal state:
``completed``, ``compensated`` or ``failed`` (a compensation was rejected: needs attention).

Needs a SQL store (SQLite or PostgreSQL): the tables come with migration 0005. Modules:
``model`` (what a saga is: pure), ``runner``, ``dispatcher``, ``deadlines``, ``sql``; test a
saga without a database with :class:`chronik.testing.SagaSpecification`.
"""

from chronik.errors import CommandRejected
from chronik.sagas.deadlines import DeadlineWorker
from chronik.sagas.dispatcher import CommandDispatcher, CommandExecutor, record_outcome
from chronik.sagas.model import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    RUNNING,
    TERMINAL,
    Deadline,
    IssuedCommand,
    Reaction,
    Saga,
    SagaCommand,
    SagaEvent,
    SagaInstance,
    command_id_for,
)
from chronik.sagas.runner import SagaRunner, saga_instance

__all__ = [
    "COMPENSATED",
    "COMPENSATING",
    "COMPLETED",
    "FAILED",
    "RUNNING",
    "TERMINAL",
    "CommandDispatcher",
    "CommandExecutor",
    "CommandRejected",
    "Deadline",
    "DeadlineWorker",
    "IssuedCommand",
    "Reaction",
    "Saga",
    "SagaCommand",
    "SagaEvent",
    "SagaInstance",
    "SagaRunner",
    "command_id_for",
    "record_outcome",
    "saga_instance",
]
