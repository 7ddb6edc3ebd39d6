"""Ids of the records a cinema writes by the thousand: holds, seat claims and tickets, bookings,
payments, admissions, and the screening records beside them.

They are time-ordered UUIDs (version 7, RFC 9562): 48 bits of Unix milliseconds, then 74
random bits. Records written together sit together in their B-tree indexes, so a busy evening
adds to the right edge of each primary key instead of to a random page of it, and the
sweeper's updates of holds that were made together touch pages that are already at hand
(measured in docs/performance.md, "Time-ordered ids"). An id tells when its record was made,
which every such record says anyway, and nothing else: one id does not lead to another.
Accounts and sign-in sessions keep random ids (version 4), so that an account's id does not
tell when it was opened.
"""

import time
import uuid

from uuid_utils.compat import uuid7


def new_id() -> uuid.UUID:
    """A new time-ordered id (UUID version 7)."""
    # Given the time, uuid-utils fills all 74 other bits at random; without it, the ids of one
    # millisecond follow a counter and only their last 32 bits are random.
    return uuid7(nanoseconds=time.time_ns())
