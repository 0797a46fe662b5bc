"""
UIDVALIDITY values.
"""

import itertools
import time

_counter = itertools.count()


def newUIDValidity() -> int:
    """
    A fresh UIDVALIDITY: the current time in seconds (as Dovecot does), kept
    strictly increasing within the process so two mailboxes made in the same
    second differ, and within 1..2**32-1.
    """
    value = int(time.time()) + next(_counter)
    return value % (2**32 - 1) or 1
