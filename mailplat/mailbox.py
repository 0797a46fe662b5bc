"""
Value types of the store contract and the rules every store shares about
mailbox names, so that each store does not re-invent them.
"""

import contextlib
import gc
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Final, FrozenSet, Hashable, Iterable, Iterator, List, Optional, Tuple

from zope.interface import implementer

from mailplat.errors import InvalidMailboxName
from mailplat.interfaces import (
    HIERARCHY_DELIMITER,
    SYSTEM_FLAGS,
    IMailboxEntry,
    IMessageInfo,
)

# Longest mailbox name we accept, in characters, and deepest hierarchy.
MAX_NAME_LENGTH = 255
MAX_NAME_DEPTH = 16


@contextlib.contextmanager
def bulkObjects() -> Iterator[None]:
    """
    Hold off Python's cyclic garbage collector while one object per
    message is made (listing, reading the uidlist, a whole listing of
    infos): these objects make no cycles, so the collector would find
    nothing, yet with a hundred thousand of them it runs over every object
    of the process again and again (a third of a first listing of 100,000
    files).  Collections resume after it; when it was already off (the
    application's choice, or another thread inside this), it is left so.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@implementer(IMessageInfo)
class MessageInfo:
    """
    A snapshot of one message's metadata (see L{IMessageInfo}); not to be
    changed once made (a store makes a new one).

    The internal date may be given later: with C{internalDate} L{None} and
    a C{dateOf} callable, the first read of L{internalDate} asks
    C{dateOf(info)} and keeps its answer, so that a store whose dates cost
    a system call each (a Maildir's file mtimes) pays for them only when a
    client asks for them, as Dovecot does.  C{dateOf} may be called from
    any thread; it is one callable per mailbox (no object per message).
    """

    __slots__ = ("uid", "flags", "_internalDate", "size", "modseq", "_dateOf")

    def __init__(self, uid: int, flags: FrozenSet[str], internalDate: Optional[float], size: int, modseq: int = 1,
                 dateOf: Optional[Callable[["MessageInfo"], float]] = None) -> None:
        if internalDate is None and dateOf is None:
            raise TypeError("MessageInfo needs an internalDate or a dateOf to find it")
        self.uid: Final = uid
        self.flags: Final = flags
        self._internalDate = internalDate
        self.size: Final = size
        self.modseq: Final = modseq
        self._dateOf = dateOf

    @property
    def internalDate(self) -> float:
        """
        POSIX timestamp of delivery or APPEND (asked of C{dateOf} at the
        first read when it was not given).
        """
        date = self._internalDate
        if date is None:
            assert self._dateOf is not None
            date = self._internalDate = self._dateOf(self)
        return date

    def withFlags(self, flags: FrozenSet[str], modseq: Optional[int] = None) -> "MessageInfo":
        """
        This info with other flags (and modseq), its date still found only
        when asked.
        """
        return MessageInfo(self.uid, flags, self._internalDate, self.size,
                           self.modseq if modseq is None else modseq, self._dateOf)

    def _key(self) -> Tuple[int, FrozenSet[str], float, int, int]:
        return (self.uid, self.flags, self.internalDate, self.size, self.modseq)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, MessageInfo)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"MessageInfo(uid={self.uid!r}, flags={self.flags!r}, internalDate={self.internalDate!r}, "
                f"size={self.size!r}, modseq={self.modseq!r})")


class SharedInfos:
    """
    One L{MessageInfo} per message version, shared by every listing of a
    mailbox: a session keeps the listing it was given for as long as the
    mailbox does not change (an idle IMAP session, for ever), so a store
    that built new objects at each listing would cost every idle session
    the whole mailbox's metadata.  Equal flag sets are shared too.

    A store keeps one per mailbox object and asks it for each message it
    lists with a C{version} (anything hashable that changes whenever the
    message's info does, such as the row it was read from); safe to call
    from a store's threads (at worst two equal objects are made).
    """

    #: Most distinct flag sets kept (beyond it the table starts again).
    MAX_FLAG_SETS = 4096

    def __init__(self) -> None:
        self._byUid: Dict[int, Tuple[Hashable, MessageInfo]] = {}
        self._flagSets: Dict[FrozenSet[str], FrozenSet[str]] = {}

    def get(self, uid: int, version: Hashable) -> Optional[MessageInfo]:
        """
        The info handed out for C{uid} at C{version}, or L{None}.
        """
        kept = self._byUid.get(uid)
        if kept is not None and kept[0] == version:
            return kept[1]
        return None

    def keep(self, version: Hashable, info: MessageInfo) -> MessageInfo:
        """
        Remember C{info} as its message's at C{version}; returns the info to
        hand out (with a shared flag set).
        """
        flags = self._flagSets.get(info.flags)
        if flags is None:
            if len(self._flagSets) >= self.MAX_FLAG_SETS:
                self._flagSets = {}
            flags = self._flagSets[info.flags] = info.flags
        elif flags is not info.flags:
            info = info.withFlags(flags)
        self._byUid[info.uid] = (version, info)
        return info

    def listed(self, infos: List[Any]) -> None:
        """
        C{infos} is a whole listing: forget the messages not in it.
        """
        if len(self._byUid) > len(infos):
            present = {i.uid for i in infos}
            self._byUid = {u: kept for u, kept in self._byUid.items() if u in present}


@dataclass(frozen=True)
class MailboxStatus:
    """
    Counts of a mailbox for STATUS, SELECT and POP3 STAT.

    @ivar messages: number of messages.
    @ivar recent: number of messages not yet claimed as \\Recent.
    @ivar unseen: number of messages without \\Seen.
    @ivar uidNext: the UID the next message will get.
    @ivar uidValidity: UIDVALIDITY.
    @ivar highestModseq: the highest modseq of the mailbox (CONDSTORE).
    @ivar size: total wire size of all messages in octets.
    """

    messages: int
    recent: int
    unseen: int
    uidNext: int
    uidValidity: int
    highestModseq: int
    size: int


@implementer(IMailboxEntry)
@dataclass(frozen=True)
class MailboxEntry:
    """
    One LIST line: a name and its attributes (see L{IMailboxEntry}).
    """

    name: str
    attributes: FrozenSet[str] = field(default_factory=frozenset)


def isInbox(name: str) -> bool:
    """
    Whether C{name} names the INBOX (case-insensitively, RFC 3501 5.1).
    """
    return name.upper() == "INBOX"


def validateMailboxName(name: str) -> str:
    """
    Check a mailbox name and return its canonical form.

    INBOX in any case becomes C{"INBOX"} (as does an C{INBOX/...} prefix);
    the name is NFC-normalised.  Refused (L{InvalidMailboxName}): empty
    names or components (leading, trailing or doubled delimiters), C{.} and
    C{..} components, NUL and other control characters, a backslash, names
    over L{MAX_NAME_LENGTH} characters or L{MAX_NAME_DEPTH} levels.
    """
    if not isinstance(name, str) or not name:
        raise InvalidMailboxName("Mailbox name is empty")
    name = unicodedata.normalize("NFC", name)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidMailboxName(f"Mailbox name is longer than {MAX_NAME_LENGTH} characters")
    parts = name.split(HIERARCHY_DELIMITER)
    if len(parts) > MAX_NAME_DEPTH:
        raise InvalidMailboxName(f"Mailbox hierarchy is deeper than {MAX_NAME_DEPTH} levels")
    for part in parts:
        if not part:
            raise InvalidMailboxName("Mailbox name has an empty level")
        if part in (".", ".."):
            raise InvalidMailboxName("Mailbox name may not have a '.' or '..' level")
        for ch in part:
            if ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
                raise InvalidMailboxName("Mailbox name has a forbidden character")
    if isInbox(parts[0]):
        parts[0] = "INBOX"
    return HIERARCHY_DELIMITER.join(parts)


def parentNames(name: str) -> List[str]:
    """
    The superior names of C{name}, outermost first (C{"a/b/c"} gives
    C{["a", "a/b"]}).
    """
    parts = name.split(HIERARCHY_DELIMITER)
    return [HIERARCHY_DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


def applyFlags(current: FrozenSet[str], flags: Iterable[str], mode: str) -> FrozenSet[str]:
    """
    The flags that result from a STORE-like change.

    @param mode: C{"set"}, C{"add"} or C{"remove"}.
    \\Recent is never kept.  System flags are matched case-insensitively and
    kept in their canonical spelling; keywords keep the first spelling seen.
    """
    given = [canonicalFlag(f) for f in flags if f.lower() != "\\recent"]
    if mode == "set":
        return frozenset(given)
    lowered = {f.lower(): f for f in current}
    if mode == "add":
        for f in given:
            lowered.setdefault(f.lower(), f)
    elif mode == "remove":
        for f in given:
            lowered.pop(f.lower(), None)
    else:
        raise ValueError(f"unknown flag mode {mode!r}")
    return frozenset(lowered.values())


_CANONICAL = {f.lower(): f for f in SYSTEM_FLAGS}


def canonicalFlag(flag: str) -> str:
    """
    A system flag in its canonical spelling (C{\\SEEN} gives C{\\Seen});
    keywords are returned as given.
    """
    return _CANONICAL.get(flag.lower(), flag)


# Mailboxes a new account gets, with their special-use attribute (RFC 6154).
DEFAULT_MAILBOXES = (
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


def buildListing(mailboxes: "dict", noselect: Iterable[str] = ()) -> List[MailboxEntry]:
    """
    The sorted listing of an account (L{IAccount.listMailboxes}).

    @param mailboxes: existing (selectable) mailbox names mapped to their
        special-use attribute or L{None}.
    @param noselect: names kept only as hierarchy (\\Noselect).
    Superiors that exist in neither are listed as \\Noselect too.
    """
    names = dict(mailboxes)
    hierarchyOnly = set(noselect) - set(names)
    for name in list(names) + list(hierarchyOnly):
        for parent in parentNames(name):
            if parent not in names:
                hierarchyOnly.add(parent)
    everything = set(names) | hierarchyOnly
    withChildren = set()
    for name in everything:
        for parent in parentNames(name):
            withChildren.add(parent)
    entries = []
    for name in sorted(everything):
        attrs = {"\\HasChildren" if name in withChildren else "\\HasNoChildren"}
        if name in hierarchyOnly:
            attrs.add("\\Noselect")
        elif names.get(name):
            attrs.add(names[name])
        entries.append(MailboxEntry(name, frozenset(attrs)))
    return entries


def renamedName(name: str, old: str, new: str) -> "str | None":
    """
    What C{name} becomes when C{old} is renamed to C{new} (itself or a
    child of C{old}), or L{None} when it is not affected.
    """
    if name == old:
        return new
    prefix = old + HIERARCHY_DELIMITER
    if name.startswith(prefix):
        return new + HIERARCHY_DELIMITER + name[len(prefix):]
    return None
