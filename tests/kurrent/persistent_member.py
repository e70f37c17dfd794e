"""A competing reader of a persistent subscription, in its own process (killed with -9 by
tests/kurrent/test_persistent_members.py): it writes each handled event to a shared file
(one O_APPEND write a line, so the file's order is the handling order) and acks it, and
parks the poison events."""

from __future__ import annotations

import os
import sys

from kurrentdbclient import KurrentDBClient


def main() -> None:
    uri, group, out = sys.argv[1:4]
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    client = KurrentDBClient(uri)
    sub = client.read_subscription_to_all(group, event_buffer_size=10, max_ack_delay=0.05)
    for event in sub:
        if event.type == "Poison":
            sub.nack(event, "park")
            continue
        os.write(fd, f"{event.stream_name} {event.stream_position} {event.id}\n".encode())
        sub.ack(event)


if __name__ == "__main__":
    main()
