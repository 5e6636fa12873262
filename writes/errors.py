"""The write path's exceptions; ``writes.api.errors`` maps each to one HTTP status in one place."""

from __future__ import annotations


class WritesError(Exception):
    """Base of every error the write path raises on purpose."""


class NoShardSelected(WritesError):
    """A shard-resident model was queried with no tenant in context and no explicit database."""


class PublishError(WritesError):
    """The broker did not take the write: the client gets 503 and may retry."""

    code = "broker_unavailable"


class BrokerUnavailable(PublishError):
    """The broker could not be reached, or did not confirm in time."""


class QueueFull(PublishError):
    """The shard's queue is at its bound and the broker refused the message."""

    code = "queue_full"


class AccountConflict(WritesError):
    """A ledger account with this id exists with other attributes (409)."""


class ForwardFailed(WritesError):
    """Writes of a moved logical shard could not be forwarded to their new queue: retried in place."""


class ErasedMeanwhile(WritesError):
    """A tenant of the batch was erased while the batch was being applied: the transaction is rolled
    back and tried again, and the second attempt leaves that tenant's writes out."""


class ArchiveError(WritesError):
    """An archive of the log cannot be written, trusted or replayed as asked (``writes.archive``)."""
