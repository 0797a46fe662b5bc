"""
IMAP sequence sets (RFC 3501 section 9, C{sequence-set}): C{1:4,7,9:*}.
"""

from typing import Iterator, List, Optional, Tuple

# One range of a sequence set as written: C{(low, high)}, C{None} for C{*}.
Bound = Optional[int]


class SequenceSetError(ValueError):
    """
    The text is not a valid sequence set.
    """


class SequenceSet:
    """
    A parsed sequence set.  C{*} stays symbolic until L{resolve} is given
    the largest number in use (the message count, or the highest UID).

    @ivar ranges: list of C{(low, high)} with C{None} standing for C{*};
        low <= high is not guaranteed (C{5:2} is legal and means 2:5).
    """

    def __init__(self, ranges: List[Tuple[Bound, Bound]]) -> None:
        self.ranges = ranges

    def resolve(self, largest: int) -> List[Tuple[int, int]]:
        """
        The ranges with C{*} replaced by C{largest}, each ordered, merged and
        sorted.  (With an empty mailbox C{*} is 0, so C{1:*} is C{[(0, 1)]};
        callers look numbers up, they do not enumerate blindly.)
        """
        out: List[Tuple[int, int]] = []
        for low, high in self.ranges:
            lo = largest if low is None else low
            hi = largest if high is None else high
            if lo > hi:
                lo, hi = hi, lo
            out.append((lo, hi))
        out.sort()
        merged: List[Tuple[int, int]] = []
        for lo, hi in out:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def contains(self, number: int, largest: int) -> bool:
        """
        Whether C{number} is in the set when C{*} is C{largest}.
        """
        return any(lo <= number <= hi for lo, hi in self.resolve(largest))

    def numbers(self, largest: int, existing: "List[int] | None" = None) -> Iterator[int]:
        """
        The numbers of the set in ascending order, limited to 1..C{largest}
        (or, with C{existing}, a sorted list such as a mailbox's UIDs, to
        those members of C{existing}).
        """
        if existing is None:
            for lo, hi in self.resolve(largest):
                yield from range(max(lo, 1), min(hi, largest) + 1)
            return
        import bisect

        for lo, hi in self.resolve(largest):
            start = bisect.bisect_left(existing, lo)
            end = bisect.bisect_right(existing, hi)
            yield from existing[start:end]


def _number(text: bytes) -> Bound:
    if text == b"*":
        return None
    if not text.isdigit() or text.startswith(b"0"):
        raise SequenceSetError(f"bad sequence number {text!r}")
    value = int(text)
    if value > 2**32 - 1:
        raise SequenceSetError(f"sequence number {value} is too large")
    return value


def parseSequenceSet(text: bytes) -> SequenceSet:
    """
    Parse C{text} (bytes, as on the wire).

    @raise SequenceSetError: when it is not a sequence set.
    """
    if not text:
        raise SequenceSetError("empty sequence set")
    ranges: List[Tuple[Bound, Bound]] = []
    for item in text.split(b","):
        low, colon, high = item.partition(b":")
        lo = _number(low)
        hi = _number(high) if colon else lo
        ranges.append((lo, hi))
    return SequenceSet(ranges)
