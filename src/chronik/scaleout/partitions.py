"""Which partition a stream belongs to: a stable hash of its id, the same in every process,
machine and Python version.

``partition_of(stream_id, n)`` is the first 8 bytes of BLAKE2b (digest size 8) of the stream
id's UTF-8 bytes, read as a big-endian unsigned integer, modulo ``n``. Python's ``hash()``
is salted per process and must never be used for this. Every event of one stream lands in
the same partition, so one owner handles a stream's events, in version order.

Example::

    >>> partition_of("order-1", 8)
    5
"""

from __future__ import annotations

import hashlib

from chronik.errors import InvalidArgument

__all__ = ["MAX_PARTITIONS", "partition_checkpoint", "partition_of", "stream_hash"]

MAX_PARTITIONS = 1024
"""The most partitions a worker group may have."""


def stream_hash(stream_id: str) -> int:
    """The 64-bit hash partitions are taken from (documented above; never ``hash()``)."""
    digest = hashlib.blake2b(stream_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def partition_of(stream_id: str, partitions: int) -> int:
    """The partition (``0 .. partitions-1``) that handles ``stream_id``."""
    return stream_hash(stream_id) % check_partitions(partitions)


def check_partitions(partitions: object) -> int:
    """``partitions`` if it is a usable partition count, else :class:`InvalidArgument`."""
    if type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidArgument(
            "partitions", f"must be an int from 1 to {MAX_PARTITIONS}, got {partitions!r}"
        )
    return partitions


def partition_checkpoint(checkpoint_name: str, partition: int, partitions: int) -> str:
    """The checkpoint of one partition: ``totals:v1/p3of8``."""
    return f"{checkpoint_name}/p{partition}of{partitions}"
