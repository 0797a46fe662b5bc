"""
mailplat's IMAP4rev1 server (RFC 3501), with IDLE (RFC 2177), UIDPLUS
(RFC 4315), SASL-IR (RFC 4959), UNSELECT (RFC 3691), NAMESPACE
(RFC 2342), STARTTLS (RFC 3501 6.2.1), MOVE (RFC 6851), CHILDREN
(RFC 3348), SPECIAL-USE and CREATE-SPECIAL-USE (RFC 6154), LIST-EXTENDED
(RFC 5258), LIST-STATUS (RFC 5819), ENABLE (RFC 5161), CONDSTORE and QRESYNC
(RFC 7162), ESEARCH (RFC 4731), LITERAL+ (RFC 7888), ID (RFC 2971), SORT
and THREAD=ORDEREDSUBJECT/REFERENCES (RFC 5256), COMPRESS=DEFLATE
(RFC 4978), QUOTA (RFC 9208, when a quota is configured) and ACL (RFC 4314,
with a shared namespace: L{mailplat.imap.acl}), written on C{twisted.internet} and the store contract
(L{mailplat.interfaces}).

A session is an explicit state machine (not authenticated, authenticated,
selected, logout).  Commands are handled strictly in the order received:
while one is waiting on the store, later input stays buffered in the
L{CommandFramer} (and the transport is paused if too much piles up).
"""

import base64
import bisect
import functools
import itertools
import operator
import re
import zlib
from array import array
from io import BytesIO
from typing import IO, Any, Callable, Dict, FrozenSet, Iterable, List, NoReturn, Optional, Sequence, Set, Tuple, Union, cast

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailplat import netutil
from mailplat.address import normalizeAddress
from mailplat.auth import sasl
from mailplat.auth.throttle import LoginThrottled
from mailplat.errors import (
    InvalidMailboxName,
    MailboxError,
    MailboxExists,
    NoSuchMailbox,
    NoSuchMessage,
)
from mailplat import mutf7
from mailplat.imap import acl
from mailplat.imap.cache import MessageCache
from mailplat.imap.parser import (
    Arguments,
    Atom,
    BodySection,
    CommandFramer,
    CommandReady,
    FetchAttribute,
    LineTooLong,
    Literal,
    LiteralAnnounced,
    LiteralFile,
    LiteralSkipped,
    ParseError,
    QuotedString,
    flagsFromTokens,
    formatDateTime,
    isValidTag,
    parseDateTime,
    parseFetchAttributes,
    tokenize,
)
from mailplat.imap.sequence import SequenceSet, SequenceSetError, parseSequenceSet
from mailplat.imap.wire import astring, literal, string
from mailplat.interfaces import (
    HIERARCHY_DELIMITER,
    SPECIAL_USE,
    IAccount,
    IMailbox,
    IMailboxListener,
    IMessageInfo,
    IMessageReader,
    LoginPortal,
)
from mailplat.mailbox import validateMailboxName

__all__ = ["IMAPServer", "IMAPFactory"]

log = Logger()

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"
LOGOUT = "logout"

_UID_OF = operator.attrgetter("uid")
_MODSEQ_OF = operator.attrgetter("modseq")

# Seconds after which the rights on a selected shared mailbox are looked
# up again (before the next command or change report).
RIGHTS_RECHECK = 30.0
# Bodies longer than this are sent from the file with a pull producer.
STREAM_THRESHOLD = 256 * 1024
# A header SEARCH reads the headers of this many uncached messages per
# turn of the reactor.
HEADER_BATCH = 1000
# Octets of a message read first for its header (doubled while the
# header goes on).
HEADER_READ = 8192
# Literals of APPEND longer than this are collected in a temporary file.
SPOOL_THRESHOLD = 64 * 1024
# Failed logins before the connection is closed.
MAX_AUTH_FAILURES = 5

# BAD answers in one session before the server says BYE (the factory's
# maxErrors, [limits] max_errors, overrides it).
MAX_ERRORS = 20

# Capabilities every session advertises (STARTTLS, AUTH=, LOGINDISABLED
# and COMPRESS depend on the connection and are added by the session).
BASE_CAPABILITIES = [
    b"IMAP4rev1", b"LITERAL+", b"SASL-IR", b"ID", b"ENABLE", b"IDLE", b"UIDPLUS", b"UNSELECT",
    b"NAMESPACE", b"MOVE", b"CHILDREN", b"SPECIAL-USE", b"CREATE-SPECIAL-USE", b"LIST-EXTENDED",
    b"LIST-STATUS", b"CONDSTORE", b"QRESYNC", b"ESEARCH", b"SORT", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES",
]
# What ENABLE can turn on (RFC 5161).
ENABLEABLE = (b"CONDSTORE", b"QRESYNC")
# STATUS items (RFC 3501 6.3.10, RFC 7162 3.1.6).
STATUS_ITEMS = (
    b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"HIGHESTMODSEQ", b"DELETED", b"DELETED-STORAGE",
)
# RFC 2971 limits on ID parameters.
ID_MAX_PAIRS = 30
ID_MAX_FIELD = 30
ID_MAX_VALUE = 1024

PERMANENT_FLAGS = b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)"
SYSTEM_FLAG_LIST = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]


class IMAPError(Exception):
    """
    End the current command with a tagged C{NO} (or C{BAD}).

    @ivar text: human-readable text.
    @ivar code: response code such as C{b"NONEXISTENT"} (without brackets).
    @ivar bad: answer C{BAD} rather than C{NO}.
    """

    def __init__(self, text: str, code: Optional[bytes] = None, bad: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.bad = bad


def _bad(text: str) -> IMAPError:
    return IMAPError(text, bad=True)


def _safe(text: str) -> bytes:
    """
    Text for a response line: one line, ASCII (other characters escaped).
    """
    text = re.sub(r"[\r\n\x00]+", " ", str(text))
    return text.encode("ascii", "backslashreplace")


def _formatFlags(flags: Iterable[str], recent: bool) -> bytes:
    ordered = sorted(flags, key=lambda f: (not f.startswith("\\"), f.lower()))
    if recent:
        ordered.append("\\Recent")
    return b"(" + " ".join(ordered).encode("utf-8", "replace") + b")"


# The wire form of each flag set seen, without and with \Recent: a big
# mailbox has few distinct flag sets, so FETCH FLAGS formats each once.
_FLAGS_WIRE: Tuple[Dict[FrozenSet[str], bytes], Dict[FrozenSet[str], bytes]] = ({}, {})
# Distinct flag sets remembered before the memo starts again (keywords
# can make many).
_FLAGS_WIRE_LIMIT = 4096


def _flagsWire(flags: Iterable[str], recent: bool = False) -> bytes:
    """
    A flag list in wire form, system flags first, with C{\\Recent} when
    C{recent}; memoised for the C{frozenset}s L{IMessageInfo} holds.
    """
    if flags.__class__ is not frozenset:
        return _formatFlags(flags, recent)
    memo = _FLAGS_WIRE[recent]
    wire = memo.get(flags)
    if wire is None:
        if len(memo) >= _FLAGS_WIRE_LIMIT:
            memo.clear()
        wire = memo[flags] = _formatFlags(flags, recent)
    return wire


def _flagsColumn(infos: Sequence[IMessageInfo], recent: Set[int]) -> List[bytes]:
    """
    L{_flagsWire} of each of C{infos}, with C{\\Recent} for the UIDs in
    C{recent}: a flag set seen before costs one dictionary lookup (the
    usual case on a big mailbox: few distinct sets, nothing recent).
    """
    get = _FLAGS_WIRE[False].get
    try:
        if recent:
            getRecent = _FLAGS_WIRE[True].get
            wires: List[Optional[bytes]] = [
                getRecent(info.flags) if info.uid in recent else get(info.flags) for info in infos
            ]
        else:
            wires = [get(info.flags) for info in infos]
    except TypeError:  # flags not in a frozenset
        wires = [None] * len(infos)
    if None in wires:
        return [
            wire if wire is not None else _flagsWire(info.flags, info.uid in recent)
            for wire, info in zip(wires, infos)
        ]
    return wires  # type: ignore[return-value]


# FETCH items the store's L{IMessageInfo} answers alone, with their
# response format.
_INFO_ITEMS = {
    "UID": b"UID %d",
    "FLAGS": b"FLAGS %s",
    "MODSEQ": b"MODSEQ (%d)",
    "RFC822.SIZE": b"RFC822.SIZE %d",
    "INTERNALDATE": b"INTERNALDATE %s",
}
# A FETCH of many messages is streamed: the responses of the first
# _STREAM_FIRST messages are written (and sent, a turn of the reactor)
# before the rest are made, then about _STREAM_BATCH octets at a time.
_STREAM_FIRST = 256
_STREAM_BATCH = 64 * 1024


def _mailboxWire(name: str) -> bytes:
    return string(mutf7.encode(name))


def _compressUIDs(uids: Sequence[int]) -> bytes:
    """
    A sorted list of UIDs as a compact uid-set (C{1:3,7}).
    """
    out = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(b"%d" % uids[i] if i == j else b"%d:%d" % (uids[i], uids[j]))
        i = j + 1
    return b",".join(out)


class SelectedView:
    """
    A session's view of its selected mailbox: the UIDs in sequence order
    and the modseq each had when last reported, kept compactly.

    @ivar mailbox: the L{IMailbox}.
    @ivar readOnly: selected with EXAMINE.
    @ivar uids: UIDs by sequence number (index 0 is message 1).
    @ivar modseqs: the modseq reported for each message.
    @ivar recent: UIDs that are \\Recent in this session.
    @ivar ghosts: UIDs expunged by another session and not yet reported
        (RFC 3501 7.4.1 defers EXPUNGE responses during FETCH, STORE and
        SEARCH).
    @ivar dirty: a change notification arrived since the last sync.
    @ivar cachePrefix: the account, mailbox and UIDVALIDITY part of the
        message cache's keys (L{IMAPServer._cacheKey}), once worked out.
    @ivar generation: bumped by every change notification (and by this
        session's own expunges); the last listing of the mailbox is reused
        for FETCH, STORE and SEARCH while it is unchanged, so a command on
        an unchanged big mailbox does not list it again.
    """

    #: The session user's rights on the mailbox (RFC 4314); the owner's
    #: are all of them.
    rights = acl.ALL_RIGHTS

    def __init__(self, mailbox: IMailbox, readOnly: bool, infos: List[IMessageInfo], recent: Set[int]) -> None:
        self.mailbox = mailbox
        self.readOnly = readOnly
        self.uids = array("I", (i.uid for i in infos))
        self.modseqs = array("Q", (i.modseq for i in infos))
        self.recent = recent
        self.ghosts: Set[int] = set()
        self.dirty = False
        self.generation = 0
        self.cachePrefix: Optional[Tuple[str, str, int]] = None
        # Another user's mailbox: the name the client selected it by, and
        # when the session's rights on it were last looked up.
        self.sharedName: Optional[str] = None
        self.rightsAt = 0.0
        # The store's highest modseq and UIDNEXT that every change up to is
        # known to this view (reported, or this session's own); -1: not
        # known (see IMAPServer._doSync).
        self.seenHighest = -1
        self.seenUidNext = 0
        self._listing: Optional[List[IMessageInfo]] = None
        self._listingUids = array("I")
        self._listingGeneration = -1

    def changed(self) -> None:
        """
        The mailbox changed: report at the next sync, list again before the
        next use.
        """
        self.dirty = True
        self.generation += 1

    def keepListing(self, infos: List[IMessageInfo], generation: int, uids: Optional["array[int]"] = None) -> None:
        """
        Keep C{infos} (a L{IMailbox.listMessages} result started at
        C{generation}) for reuse until the next change.

        @param uids: the UIDs of C{infos}, in their order, when the caller
            has them already (kept, not copied).
        """
        if generation != self.generation:
            return
        self._listing = infos
        self._listingUids = array("I", map(_UID_OF, infos)) if uids is None else uids
        self._listingGeneration = generation

    def listedUids(self) -> "array[int]":
        """
        The UIDs of the kept listing (see L{listing}), in its order.
        """
        return self._listingUids

    def listing(self) -> Optional[List[IMessageInfo]]:
        """
        The kept listing when nothing changed since it was taken, else
        L{None}.
        """
        if self._listing is not None and self._listingGeneration == self.generation:
            return self._listing
        return None

    def infosByUid(self, uids: Optional[List[int]]) -> Dict[int, IMessageInfo]:
        """
        From the kept (current) listing: the info of each of C{uids} still
        there (every message when L{None}), by UID.
        """
        listing = self._listing
        assert listing is not None
        listingUids = self._listingUids
        if uids is None:
            return dict(zip(listingUids, listing))
        if len(uids) * 8 > len(listing):
            every = dict(zip(listingUids, listing))
            return {u: every[u] for u in uids if u in every}
        out = {}
        for u in uids:
            i = bisect.bisect_left(listingUids, u)
            if i < len(listingUids) and listingUids[i] == u:
                out[u] = listing[i]
        return out

    def infosAt(self, indexes: Sequence[int]) -> List[Optional[IMessageInfo]]:
        """
        From the kept (current) listing: the info of the message at each
        of C{indexes} (sequence number - 1), or L{None} for one no longer
        there.  When the listing holds exactly the view's messages (the
        usual case) this is a lookup by position, with no per-UID search.
        """
        listing = self._listing
        assert listing is not None
        uids = self.uids
        if self._listingUids == uids:
            return [listing[i] for i in indexes]
        byUid = dict(zip(self._listingUids, listing))
        return [byUid.get(uids[i]) for i in indexes]

    def ownFlagChanges(self, infos: Iterable[IMessageInfo]) -> None:
        """
        This session changed flags and got C{infos} back: when the modseqs
        new to the view are exactly the next ones after L{seenHighest}, no
        other change came in between, and the view still knows every
        change up to the last of them.
        """
        if self.seenHighest < 0:
            return
        fresh = sorted({info.modseq for info in infos if info.modseq > self.seenHighest})
        if fresh and fresh[0] == self.seenHighest + 1 and fresh[-1] == self.seenHighest + len(fresh):
            self.seenHighest = fresh[-1]

    def patchListing(self, infos: Iterable[IMessageInfo]) -> None:
        """
        Put the new infos this session's own flag change returned into the
        kept listing, so it stays right until the store's notification
        (which may come later) makes it list again.
        """
        listing = self._listing
        if listing is None:
            return
        for info in infos:
            i = bisect.bisect_left(self._listingUids, info.uid)
            if i < len(self._listingUids) and self._listingUids[i] == info.uid:
                listing[i] = info

    def __len__(self) -> int:
        return len(self.uids)

    def indexOf(self, uid: int) -> int:
        """
        The index (sequence number - 1) of C{uid}, or -1.
        """
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i
        return -1

    def isRecent(self, uid: int) -> bool:
        """
        Whether C{uid} is \\Recent in this session.
        """
        return uid in self.recent

    def recentCount(self) -> int:
        """
        How many messages of the view are \\Recent: a lookup of each
        recent UID in the view when they are few, else one pass over the
        view (a session that claimed a big mailbox nobody had opened holds
        every message as recent: 100,000 lookups took 150 ms).
        """
        recent = self.recent
        if len(recent) * 16 < len(self.uids):
            return sum(1 for uid in recent if self.indexOf(uid) >= 0)
        return len(recent.intersection(self.uids))


@implementer(IPullProducer)
class _FileSender:
    """
    Write C{length} octets of a file to a consumer, a chunk each time it
    asks, so that a large body is never held in memory whole.
    """

    CHUNK = 65536

    def __init__(self, source: IO[bytes], length: int, consumer: Any) -> None:
        self.source = source
        self.remaining = length
        self.consumer = consumer
        self.deferred: defer.Deferred = defer.Deferred()

    def start(self) -> defer.Deferred:
        self.consumer.registerProducer(self, False)
        return self.deferred

    def resumeProducing(self) -> None:
        if self.deferred.called:
            return
        if self.remaining > 0:
            data = self.source.read(min(self.CHUNK, self.remaining))
            if not data:
                log.error("message file ended {n} octets early; padding", n=self.remaining)
                data = b" " * min(self.CHUNK, self.remaining)
            self.remaining -= len(data)
            self.consumer.write(data)
        if self.remaining <= 0:
            self.consumer.unregisterProducer()
            self.deferred.callback(None)

    def stopProducing(self) -> None:
        if not self.deferred.called:
            self.deferred.errback(ConnectionAborted())


class _DeflatingTransport:
    """
    The transport of a session after COMPRESS DEFLATE: what the session
    writes is deflated (raw, RFC 1951) and flushed to a byte boundary at
    each write, so every response leaves at once; everything else goes to
    the wrapped transport.
    """

    def __init__(self, transport: Any) -> None:
        self.wrapped = transport
        self._deflater = zlib.compressobj(6, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        self.wrapped.write(self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class ConnectionAborted(Exception):
    """
    The connection went away while a command was running.
    """


# command name -> (allowed states, method name, whether EXPUNGE may be sent)
_ANY = (NOT_AUTHENTICATED, AUTHENTICATED, SELECTED)
_AUTH = (AUTHENTICATED, SELECTED)
_SEL = (SELECTED,)
_COMMANDS: Dict[bytes, Tuple[Tuple[str, ...], str, bool]] = {
    b"CAPABILITY": (_ANY, "do_CAPABILITY", True),
    b"STARTTLS": ((NOT_AUTHENTICATED,), "do_STARTTLS", True),
    b"ID": (_ANY, "do_ID", True),
    b"ENABLE": ((AUTHENTICATED,), "do_ENABLE", True),
    b"NOOP": (_ANY, "do_NOOP", True),
    b"LOGOUT": (_ANY, "do_LOGOUT", True),
    b"LOGIN": ((NOT_AUTHENTICATED,), "do_LOGIN", True),
    b"AUTHENTICATE": ((NOT_AUTHENTICATED,), "do_AUTHENTICATE", True),
    b"SELECT": (_AUTH, "do_SELECT", True),
    b"EXAMINE": (_AUTH, "do_EXAMINE", True),
    b"CREATE": (_AUTH, "do_CREATE", True),
    b"DELETE": (_AUTH, "do_DELETE", True),
    b"RENAME": (_AUTH, "do_RENAME", True),
    b"SUBSCRIBE": (_AUTH, "do_SUBSCRIBE", True),
    b"UNSUBSCRIBE": (_AUTH, "do_UNSUBSCRIBE", True),
    b"LIST": (_AUTH, "do_LIST", True),
    b"LSUB": (_AUTH, "do_LSUB", True),
    b"NAMESPACE": (_AUTH, "do_NAMESPACE", True),
    b"STATUS": (_AUTH, "do_STATUS", True),
    b"APPEND": (_AUTH, "do_APPEND", True),
    b"COMPRESS": (_AUTH, "do_COMPRESS", True),
    b"GETQUOTA": (_AUTH, "do_GETQUOTA", True),
    b"GETQUOTAROOT": (_AUTH, "do_GETQUOTAROOT", True),
    b"SETQUOTA": (_AUTH, "do_SETQUOTA", True),
    b"IDLE": (_AUTH, "do_IDLE", True),
    b"SETACL": (_AUTH, "do_SETACL", True),
    b"DELETEACL": (_AUTH, "do_DELETEACL", True),
    b"GETACL": (_AUTH, "do_GETACL", True),
    b"LISTRIGHTS": (_AUTH, "do_LISTRIGHTS", True),
    b"MYRIGHTS": (_AUTH, "do_MYRIGHTS", True),
    b"CHECK": (_SEL, "do_CHECK", True),
    b"CLOSE": (_SEL, "do_CLOSE", True),
    b"UNSELECT": (_SEL, "do_UNSELECT", True),
    b"EXPUNGE": (_SEL, "do_EXPUNGE", True),
    b"SEARCH": (_SEL, "do_SEARCH", False),
    b"FETCH": (_SEL, "do_FETCH", False),
    b"STORE": (_SEL, "do_STORE", False),
    b"COPY": (_SEL, "do_COPY", True),
    b"MOVE": (_SEL, "do_MOVE", True),
    b"SORT": (_SEL, "do_SORT", False),
    b"THREAD": (_SEL, "do_THREAD", False),
    b"UID": (_SEL, "do_UID", False),
}


@implementer(IMailboxListener)
class IMAPServer(Protocol):
    """
    One IMAP session.

    @ivar state: one of C{"not authenticated"}, C{"authenticated"},
        C{"selected"}, C{"logout"}.
    @ivar account: the L{IAccount} once logged in.
    @ivar view: the L{SelectedView} in the selected state.
    """

    transport: netutil.IConnectionTransport

    def __init__(
        self,
        portal: LoginPortal,
        hostname: str,
        timeout: float = 1800.0,
        maxLineLength: int = 65536,
        maxLiteralSize: int = 64 * 1024 * 1024,
        clock: Optional[IReactorTime] = None,
        contextFactory: Any = None,
        cache: Optional[MessageCache] = None,
        quotaBytes: int = 0,
        quotaMessages: int = 0,
    ) -> None:
        """
        @param portal: the cred portal logins go through (for L{IAccount}).
        @param hostname: this server's name, shown in responses.
        @param timeout: autologout after this many idle seconds.
        @param maxLineLength: longest command line accepted.
        @param maxLiteralSize: largest APPEND message accepted.
        @param clock: for the autologout timer; the global reactor if
            L{None}.
        @param contextFactory: what C{transport.startTLS} accepts; STARTTLS
            is offered only when this is set.
        @param cache: where parsed message answers are kept (shared by the
            factory's sessions); a private one if L{None}.
        @param quotaBytes: each account's storage quota in octets (RFC 9208
            STORAGE); 0 for none.
        @param quotaMessages: each account's limit on messages (RFC 9208
            MESSAGE); 0 for none.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.portal = portal
        self.hostname = hostname
        self.timeout = timeout
        self.maxLineLength = maxLineLength
        self.maxLiteralSize = maxLiteralSize
        self.clock = clock
        self.contextFactory = contextFactory
        self.cache = cache if cache is not None else MessageCache(10000)
        self.quotaBytes = max(0, quotaBytes)
        self.quotaMessages = max(0, quotaMessages)
        self.state = NOT_AUTHENTICATED
        self.account: Optional[IAccount] = None
        self.view: Optional[SelectedView] = None
        self._logout: Optional[Callable[[], None]] = None
        self._framer = CommandFramer(maxLineLength, spoolMemory=1024 * 1024)
        self._memoryLiteral = maxLineLength
        self._busy = False
        self._pumping = False
        self._paused = False
        self._closed = False
        self._lineWaiter: Optional[defer.Deferred] = None
        self._idling = False
        self._syncLock = defer.DeferredLock()
        self._timeoutCall: Optional[IDelayedCall] = None
        self._authFailures = 0
        self._producer: Optional[_FileSender] = None
        self._tls = False
        self._afterResponse: Optional[Callable[[], None]] = None
        self._skipReasons: List[bytes] = []
        self.enabled: Set[bytes] = set()
        self.condstore = False
        self.qresync = False
        self._inflater: Any = None

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        netutil.setNoDelay(self.transport)
        self._tls = netutil.isEncrypted(self.transport)
        self._timeoutCall = self.clock.callLater(self.timeout, self._autologout)
        self._write(b"* OK [CAPABILITY " + self._capabilities() + b"] mailplat ready")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        self.state = LOGOUT
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None
        self._deselect()
        self._framer.close()
        if self._lineWaiter is not None:
            waiter, self._lineWaiter = self._lineWaiter, None
            waiter.errback(ConnectionAborted())
        if self._producer is not None:
            self._producer.stopProducing()
        if self._logout is not None:
            logout, self._logout = self._logout, None
            try:
                logout()
            except Exception:
                log.failure("avatar logout failed")

    def _write(self, line: bytes) -> None:
        if not self._closed:
            self.transport.write(line + b"\r\n")

    def _writeRaw(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)

    def _resetTimeout(self) -> None:
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.reset(self.timeout)

    def _autologout(self) -> None:
        self._timeoutCall = None
        self._write(b"* BYE Autologout; idle for too long")
        self.state = LOGOUT
        self.transport.loseConnection()

    def _tlsActive(self) -> bool:
        """
        Whether the connection is encrypted (implicit TLS or STARTTLS).
        """
        return self._tls or netutil.isEncrypted(self.transport)

    def _cleartextAllowed(self) -> bool:
        """
        Whether a password may be sent now: over TLS, from loopback, or
        anywhere when the config says C{auth.allow_plaintext}.
        """
        allow = getattr(getattr(self, "factory", None), "allowPlaintext", False)
        return self._tlsActive() or netutil.cleartextAllowed(self.transport, allow)

    def _canStartTLS(self) -> bool:
        return (
            self.contextFactory is not None
            and not self._tlsActive()
            and getattr(self.transport, "startTLS", None) is not None
        )

    def _capabilities(self) -> bytes:
        caps = list(BASE_CAPABILITIES)
        if self.state == NOT_AUTHENTICATED:
            if self._canStartTLS():
                caps.append(b"STARTTLS")
            mechanisms = sasl.mechanismsFor(self.portal, self._cleartextAllowed())
            if mechanisms:
                caps.extend(b"AUTH=" + name.encode("ascii") for name in mechanisms)
            else:
                caps.append(b"LOGINDISABLED")
        elif self.state != LOGOUT:
            if self._inflater is None:
                caps.append(b"COMPRESS=DEFLATE")
            if self.account is not None and self._namespaces().enabled:
                caps.extend(acl.CAPABILITIES)
            if self.quotaBytes or self.quotaMessages:
                caps.append(b"QUOTA")
                if self.quotaBytes:
                    caps.append(b"QUOTA=RES-STORAGE")
                if self.quotaMessages:
                    caps.append(b"QUOTA=RES-MESSAGE")
        return b" ".join(caps)

    # -- input -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state == LOGOUT:
            return
        self._resetTimeout()
        if self._inflater is not None:
            try:
                data = self._inflater.decompress(data)
            except zlib.error:
                self._write(b"* BYE Invalid compressed data")
                self.state = LOGOUT
                self.transport.loseConnection()
                return
        self._framer.feed(data)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._closed and self.state != LOGOUT:
                if self._lineWaiter is not None:
                    line = self._framer.nextLine()
                    if line is None:
                        break
                    waiter, self._lineWaiter = self._lineWaiter, None
                    waiter.callback(line)
                    continue
                if self._busy:
                    break
                event = self._framer.next()
                if event is None:
                    break
                self._handleEvent(event)
        finally:
            self._pumping = False
        self._flowControl()

    def _flowControl(self) -> None:
        if self._closed:
            return
        tooMuch = self._busy and self._framer.buffered > self.maxLineLength + 65536
        if tooMuch and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not tooMuch and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _handleEvent(self, event: Any) -> None:
        if isinstance(event, CommandReady):
            self._handleCommand(event.parts)
        elif isinstance(event, LineTooLong):
            if event.tag is not None:
                self._write(event.tag + b" BAD Line too long")
            else:
                self._write(b"* BAD Line too long")
            self._countBad()
        elif isinstance(event, LiteralAnnounced):
            self._handleLiteral(event)
        elif isinstance(event, LiteralSkipped):
            prefix = event.tag if event.tag is not None else b"*"
            reason = self._skipReasons.pop(0) if self._skipReasons else b"BAD Literal refused"
            self._write(prefix + b" " + reason)

    def _handleLiteral(self, event: LiteralAnnounced) -> None:
        """
        Accept or refuse an announced literal.  A refused synchronising
        literal is answered at once (the client never sends it); a refused
        non-synchronising one (LITERAL+, RFC 7888 4) is read and thrown
        away with the rest of its command, and answered then.
        """
        framer = self._framer
        tag = event.tag

        def refuse(reason: bytes) -> None:
            framer.rejectLiteral()
            if event.nonSync:
                self._skipReasons.append(reason)
            else:
                self._write((tag if tag is not None else b"*") + b" " + reason)

        if tag is None:
            refuse(b"BAD Invalid tag")
            return
        if event.command == b"APPEND":
            if self.state not in _AUTH:
                refuse(b"BAD APPEND is not valid in this state")
                return
            if event.size > self.maxLiteralSize:
                refuse(b"NO [TOOBIG] Message too large")
                return
            toFile = event.size > SPOOL_THRESHOLD
            if not toFile and not framer.fitsInMemory(event.size):
                toFile = True
            framer.acceptLiteral(toFile=toFile)
        else:
            if event.size > self._memoryLiteral or not framer.fitsInMemory(event.size):
                refuse(b"BAD Literal too large")
                return
            framer.acceptLiteral(toFile=False)
        if not event.nonSync:
            self._write(b"+ Ready for literal data")

    def _readLine(self) -> defer.Deferred:
        """
        The next bare line from the client (AUTHENTICATE data, DONE).
        """
        assert self._lineWaiter is None
        d: defer.Deferred = defer.Deferred()
        self._lineWaiter = d
        if not self._pumping:
            self._pump()
        return d

    def _handleCommand(self, parts: List[Any]) -> None:
        def closeFiles(result: object = None) -> object:
            for part in parts:
                if isinstance(part, LiteralFile):
                    part.close()
            return result

        first = bytes(parts[0]) if parts else b""
        try:
            tokens = tokenize(parts)
        except ParseError as e:
            closeFiles()
            tag = first.split(b" ", 1)[0]
            prefix = tag if tag and isValidTag(tag) else b"*"
            self._write(prefix + b" BAD " + _safe(str(e)))
            self._countBad()
            return
        if not tokens or not isinstance(tokens[0], Atom) or not isValidTag(tokens[0]):
            closeFiles()
            if tokens or first.strip():
                self._write(b"* BAD Invalid tag")
                self._countBad()
            return
        tag = bytes(tokens[0])
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            closeFiles()
            self._write(tag + b" BAD Missing command")
            self._countBad()
            return
        name = bytes(tokens[1]).upper()
        d = self._run(tag, name, Arguments(tokens[2:]))
        d.addBoth(closeFiles)
        if not d.called:
            self._busy = True
            d.addBoth(self._commandDone)

    def _countBad(self) -> None:
        """
        Count a BAD answer; after the factory's C{maxErrors} in a session
        the client is told C{* BYE} and the connection closed (a client
        that only sends garbage is not served for ever).
        """
        self._badCount = getattr(self, "_badCount", 0) + 1
        limit = getattr(getattr(self, "factory", None), "maxErrors", MAX_ERRORS)
        if limit and self._badCount >= limit and self.state != LOGOUT:
            self._write(b"* BYE Too many errors")
            self.state = LOGOUT
            self.transport.loseConnection()

    def _commandDone(self, result: object) -> None:
        self._busy = False
        self._resetTimeout()
        if not self._pumping:
            self._pump()

    @defer.inlineCallbacks
    def _run(self, tag: bytes, name: bytes, args: Arguments) -> Any:
        allowExpunge = True
        try:
            entry = _COMMANDS.get(name)
            if entry is None:
                raise _bad("Unknown command")
            states, method, allowExpunge = entry
            if self.view is not None and self.view.sharedName is not None:
                yield self._recheckRights()
            if self.state not in states:
                raise _bad(f"{name.decode('ascii', 'replace')} is not valid in the {self.state} state")
            text = yield getattr(self, method)(tag, args)
            response = tag + b" OK " + text
        except IMAPError as e:
            code = b"[" + e.code + b"] " if e.code else b""
            response = tag + (b" BAD " if e.bad else b" NO ") + code + _safe(e.text)
            if e.bad:
                self._countBad()
        except ParseError as e:
            response = tag + b" BAD " + _safe(str(e))
            self._countBad()
        except acl.NoPermission as e:
            response = tag + b" NO [NOPERM] " + _safe(str(e))
        except acl.RightsError as e:
            response = tag + (b" BAD " if e.bad else b" NO [CANNOT] ") + _safe(str(e))
            if e.bad:
                self._countBad()
        except InvalidMailboxName as e:
            response = tag + b" NO [CANNOT] " + _safe(str(e))
        except NoSuchMailbox as e:
            response = tag + b" NO [NONEXISTENT] " + _safe(str(e))
        except MailboxExists as e:
            response = tag + b" NO [ALREADYEXISTS] " + _safe(str(e))
        except MailboxError as e:
            response = tag + b" NO " + _safe(str(e))
        except NoSuchMessage:
            response = tag + b" NO [EXPUNGEISSUED] Message was expunged"
        except Exception:
            if self._closed:
                return
            log.failure("IMAP command {name} failed", name=name)
            response = tag + b" NO [SERVERBUG] Internal error"
        if self._closed:
            return
        if self.view is not None:
            try:
                yield self._sync(allowExpunge)
            except Exception:
                if self._closed:
                    return
                log.failure("IMAP mailbox sync failed")
        self._write(response)
        after, self._afterResponse = self._afterResponse, None
        if after is not None:
            after()
        if self.state == LOGOUT:
            self.transport.loseConnection()

    # -- changes from other sessions ----------------------------------------

    def mailboxChanged(self, mailbox: IMailbox) -> None:
        """
        See L{IMailboxListener.mailboxChanged}: mark the view dirty and,
        while IDLE, report at once.
        """
        try:
            view = self.view
            if view is None or view.mailbox is not mailbox:
                return
            view.changed()
            if self._idling:
                self._sync(True).addErrback(self._syncFailed)
        except Exception:
            log.failure("IMAP mailboxChanged failed")

    def _syncFailed(self, failure: Failure) -> None:
        if not self._closed:
            log.failure("IMAP mailbox sync failed", failure)

    def _sync(self, allowExpunge: bool) -> defer.Deferred:
        """
        Report changes to the selected mailbox (untagged EXPUNGE, EXISTS,
        RECENT, FETCH FLAGS), serialised so two reports never interleave.
        """
        return self._syncLock.run(self._doSync, allowExpunge)

    @defer.inlineCallbacks
    def _recheckRights(self) -> Any:
        """
        Look up the session's rights on a selected mailbox another user
        shares again once L{RIGHTS_RECHECK} seconds have passed since the
        last look (as Dovecot's ACL cache does): a share withdrawn, or its
        mailbox gone, closes the mailbox (C{* OK [CLOSED]}, RFC 7162's
        code for a mailbox closed without a command), so an IDLE or a
        session kept open for days does not keep reading it; rights taken
        away refuse what needs them from then on.
        """
        view = self.view
        if view is None or view.sharedName is None:
            return
        now = self.clock.seconds()
        if now - view.rightsAt < RIGHTS_RECHECK:
            return
        view.rightsAt = now
        try:
            target = yield self._namespaces().resolve(view.sharedName)
            rights = target.rights
        except (NoSuchMailbox, acl.NoPermission):
            rights = ""
        if self.view is not view or self._closed:
            return
        view.rights = rights
        if "r" not in rights:
            self._deselect()
            self._write(b"* OK [CLOSED] Access to the selected mailbox was withdrawn")

    @defer.inlineCallbacks
    def _doSync(self, allowExpunge: bool) -> Any:
        view = self.view
        if view is None or self._closed:
            return
        if view.sharedName is not None:
            yield self._recheckRights()
            if self.view is not view or self._closed:
                return
        if not view.dirty and not (allowExpunge and view.ghosts):
            return
        view.dirty = False
        generation = view.generation
        # The counts first: when they show no change the view does not
        # know of (only this session's own flag changes came, see
        # SelectedView.ownFlagChanges), there is nothing to report and the
        # mailbox is not listed (O(1), not O(messages), per own STORE);
        # else they are what the view knows after this report (taken
        # before the listing, so never newer than it).
        status = yield view.mailbox.status()
        if self.view is not view or self._closed:
            return
        counts = (status.highestModseq, status.messages, status.uidNext)
        if view.seenHighest >= 0 and not view.ghosts and counts == (view.seenHighest, len(view.uids), view.seenUidNext):
            return
        infos = list((yield view.mailbox.listMessages()))
        if self.view is not view or self._closed:
            return
        view.keepListing(infos, generation)
        oldCount = len(view.uids)
        uids, modseqs = view.uids, view.modseqs
        flagLines = []

        def changedFlags(i: int, info: IMessageInfo) -> None:
            modseqs[i] = info.modseq
            modseq = b" MODSEQ (%d)" % (info.modseq,) if self.condstore else b""
            uidItem = b"UID %d " % (info.uid,) if self.qresync else b""
            flagLines.append(
                b"* %d FETCH (%sFLAGS %s%s)" % (i + 1, uidItem, _flagsWire(info.flags, view.isRecent(info.uid)), modseq)
            )

        listed = view.listedUids() if view.listing() is infos else array("I", map(_UID_OF, infos))
        if len(listed) >= oldCount and listed[:oldCount] == uids:
            # Every message of the view is still there, in its place (the
            # usual case): only the changed modseqs are looked at one by
            # one, the comparisons made in C, not a Python step a message.
            listedModseqs = array("Q", map(_MODSEQ_OF, infos[:oldCount]))
            if listedModseqs != modseqs:
                for i in itertools.compress(range(oldCount), map(operator.ne, listedModseqs, modseqs)):
                    changedFlags(i, infos[i])
            j = oldCount
        else:
            j = 0
            for i in range(oldCount):
                uid = uids[i]
                while j < len(infos) and infos[j].uid < uid:
                    j += 1
                if j < len(infos) and infos[j].uid == uid:
                    info = infos[j]
                    if info.modseq != modseqs[i]:
                        changedFlags(i, info)
                    j += 1
                elif uid not in view.ghosts:
                    view.ghosts.add(uid)
        last = uids[-1] if oldCount else 0
        new = [info for info in infos[j:] if info.uid > last]
        for line in flagLines:
            self._write(line)
        if allowExpunge and view.ghosts:
            keepUids = array("I")
            keepMods = array("Q")
            removed = 0
            if self.qresync:
                # RFC 7162 3.2: VANISHED replaces EXPUNGE.
                self._write(b"* VANISHED " + _compressUIDs(sorted(view.ghosts)))
            for i in range(len(uids)):
                if uids[i] in view.ghosts:
                    if not self.qresync:
                        self._write(b"* %d EXPUNGE" % (i + 1 - removed,))
                    removed += 1
                    view.recent.discard(uids[i])
                else:
                    keepUids.append(uids[i])
                    keepMods.append(modseqs[i])
            view.uids, view.modseqs = keepUids, keepMods
            view.ghosts.clear()
        if new:
            view.uids.extend(info.uid for info in new)
            view.modseqs.extend(info.modseq for info in new)
            if not view.readOnly:
                claimed = yield view.mailbox.claimRecent()
                if self.view is not view or self._closed:
                    return
                view.recent.update(claimed)
            self._write(b"* %d EXISTS" % (len(view.uids),))
            self._write(b"* %d RECENT" % (view.recentCount(),))
        view.seenHighest, view.seenUidNext = status.highestModseq, status.uidNext

    # -- helpers -----------------------------------------------------------

    def _namespaces(self) -> acl.Namespaces:
        """
        The mailboxes the logged-in account reaches (its own and those
        shared with it), with the rights it has on them.
        """
        namespaces = getattr(self, "_namespacesOf", None)
        if namespaces is None or namespaces.account is not self.account:
            assert self.account is not None
            namespaces = self._namespacesOf = acl.Namespaces(self.account)
        return namespaces

    def _deselect(self) -> None:
        view, self.view = self.view, None
        if view is not None:
            view.mailbox.removeListener(self)
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    def _decodeName(self, raw: bytes) -> str:
        try:
            return mutf7.decode(raw)
        except mutf7.MUTF7Error as e:
            raise _bad(f"Invalid mailbox name: {e}")

    def _mailboxName(self, args: Arguments, create: bool = False) -> str:
        """
        A mailbox argument, decoded and validated.
        """
        name = self._decodeName(args.astring("mailbox name"))
        if create and name.endswith(HIERARCHY_DELIMITER) and len(name) > 1:
            name = name[:-1]
        try:
            return validateMailboxName(name)
        except InvalidMailboxName as e:
            raise IMAPError(f"Invalid mailbox name: {e}", b"CANNOT")

    def _resolve(self, seqset: SequenceSet, uid: bool) -> List[int]:
        """
        Indexes into the view named by C{seqset} (sequence numbers, or UIDs
        when C{uid}).
        """
        view = self.view
        assert view is not None
        count = len(view.uids)
        if uid:
            # Each range of UIDs is a run of positions in the sorted view.
            uids = view.uids
            largest = uids[-1] if count else 0
            indexes: List[int] = []
            for low, high in seqset.resolve(largest):
                indexes.extend(range(bisect.bisect_left(uids, low), bisect.bisect_right(uids, high)))
            return indexes
        for first, last in seqset.ranges:
            for bound in (first, last):
                if bound is not None and bound > count:
                    raise _bad("Invalid message sequence number")
        return [n - 1 for n in seqset.numbers(count)]

    def _requireWritable(self) -> SelectedView:
        view = self.view
        assert view is not None
        if view.readOnly:
            raise IMAPError("Mailbox is read-only", b"READ-ONLY")
        return view

    def _requireRights(self, rights: str, what: str) -> SelectedView:
        """
        The selected view, writable and with C{rights} on its mailbox
        (else C{NO [READ-ONLY]} or C{NO [NOPERM]}).
        """
        view = self._requireWritable()
        missing = [right for right in rights if right not in view.rights]
        if missing:
            raise acl.NoPermission(f"You may not {what} this mailbox (the right {''.join(missing)} is needed)")
        return view

    @defer.inlineCallbacks
    def _copyTarget(self, name: str) -> Any:
        """
        The target of COPY or MOVE, with the C{i} right (else
        C{NO [TRYCREATE]} or C{NO [NOPERM]}).

        @return: a Deferred firing with C{(target, mailbox)}.
        """
        try:
            found = yield self._namespaces().open(name, acl.COMMAND_RIGHTS["COPY"], "copy messages into")
        except NoSuchMailbox:
            raise IMAPError("Mailbox does not exist", b"TRYCREATE")
        return found

    @defer.inlineCallbacks
    def _dropForbiddenFlags(self, target: acl.Target, mailbox: IMailbox, pairs: List[Tuple[int, int]]) -> Any:
        """
        After a COPY or MOVE into a mailbox whose flags the user may not
        all set, clear the copies' flags the user has no right to (RFC 4314
        section 4: the copies get only the flags the user may set).
        """
        if acl.canChangeFlags(target.rights) and "w" in target.rights:
            return
        infos = yield self._currentInfos([p[0] for p in pairs])
        forbidden = sorted({f for info in infos.values() for f in info.flags if not acl.allowedFlags(target.rights, [f])})
        if forbidden:
            yield mailbox.setFlags([p[1] for p in pairs], forbidden, "remove")

    def _conditionalFlags(self, view: SelectedView, flags: List[str], mode: str) -> List[str]:
        """
        The flags a conditional STORE (UNCHANGEDSINCE) may change under
        the user's rights: all of them with every flag right; else the
        allowed ones of C{+FLAGS}/C{-FLAGS}, and C{FLAGS} is refused (one
        atomic step cannot keep the others' state).
        """
        rights = view.rights
        if acl.canChangeFlags(rights) and "w" in rights:
            return flags
        allowed = acl.allowedFlags(rights, flags)
        if mode == "set" or (flags and not allowed):
            raise acl.NoPermission("You may not change these flags in this mailbox")
        return allowed

    @defer.inlineCallbacks
    def _setFlagsAllowed(self, view: SelectedView, uids: List[int], flags: List[str], mode: str) -> Any:
        """
        STORE under the user's rights: flags the user may not change keep
        their state (RFC 4314 section 4); refused with C{NO [NOPERM]} when
        none of the flags named may be changed.
        """
        rights = view.rights
        if acl.canChangeFlags(rights) and "w" in rights:
            updated = yield view.mailbox.setFlags(uids, flags, mode)
            return updated
        if flags and not acl.allowedFlags(rights, flags):
            raise acl.NoPermission("You may not change these flags in this mailbox")
        if mode != "set":
            allowed = acl.allowedFlags(rights, flags)
            if not allowed:
                return []
            updated = yield view.mailbox.setFlags(uids, allowed, mode)
            return updated
        current = yield self._currentInfos(uids)
        groups: Dict[frozenset, List[int]] = {}
        for u in uids:
            if u in current:
                groups.setdefault(acl.storedFlags(rights, current[u].flags, flags, mode), []).append(u)
        updated = []
        for newFlags, members in groups.items():
            updated.extend((yield view.mailbox.setFlags(members, sorted(newFlags), "set")))
        return sorted(updated, key=lambda info: info.uid)

    @defer.inlineCallbacks
    def _currentInfos(self, uids: Optional[List[int]]) -> Any:
        """
        The current L{IMessageInfo} of each of C{uids} (every message when
        L{None}) that still exists, by UID.
        """
        view = self.view
        assert view is not None
        if view.listing() is None:
            generation = view.generation
            infos = yield view.mailbox.listMessages()
            if view.listing() is None:
                view.keepListing(list(infos), generation)
            if view.listing() is None:
                # Changed while listing: answer from this listing anyway.
                if uids is None:
                    return {info.uid: info for info in infos}
                wanted = set(uids)
                return {info.uid: info for info in infos if info.uid in wanted}
        return view.infosByUid(uids)

    # -- any state ---------------------------------------------------------

    def do_CAPABILITY(self, tag: bytes, args: Arguments) -> bytes:
        args.end()
        self._write(b"* CAPABILITY " + self._capabilities())
        return b"CAPABILITY completed"

    def do_ID(self, tag: bytes, args: Arguments) -> bytes:
        """
        ID (RFC 2971): check the client's parameter list and answer with
        ours.
        """
        token = args._take("ID parameter list")
        args.end()
        if isinstance(token, list):
            if not token or len(token) % 2 or len(token) > 2 * ID_MAX_PAIRS:
                raise _bad("ID takes at most 30 field/value pairs")
            seen = set()
            for n in range(0, len(token), 2):
                field, value = token[n], token[n + 1]
                if not isinstance(field, (QuotedString, Literal)):
                    raise _bad("ID field names must be strings")
                if len(field) > ID_MAX_FIELD or bytes(field).lower() in seen:
                    raise _bad("ID field name too long or repeated")
                seen.add(bytes(field).lower())
                isNil = isinstance(value, Atom) and bytes(value).upper() == b"NIL"
                if not isNil and not (isinstance(value, (QuotedString, Literal)) and len(value) <= ID_MAX_VALUE):
                    raise _bad("ID values must be strings of at most 1024 octets or NIL")
        elif not (isinstance(token, Atom) and bytes(token).upper() == b"NIL"):
            raise _bad("ID takes NIL or a parenthesised list")
        self._write(b'* ID ("name" "mailplat" "vendor" "mailplat")')
        return b"ID completed"

    def do_NOOP(self, tag: bytes, args: Arguments) -> bytes:
        args.end()
        return b"NOOP completed"

    def do_LOGOUT(self, tag: bytes, args: Arguments) -> bytes:
        args.end()
        self._write(b"* BYE " + _safe(self.hostname) + b" logging out")
        self._deselect()
        self.state = LOGOUT
        return b"LOGOUT completed"

    # -- not authenticated -------------------------------------------------

    def do_STARTTLS(self, tag: bytes, args: Arguments) -> bytes:
        """
        STARTTLS (RFC 3501 6.2.1): answer OK, then start TLS; input the
        client pipelined after the command is thrown away (it was sent in
        the clear and may have been injected).
        """
        args.end()
        if self._tlsActive():
            raise _bad("TLS is already active")
        if not self._canStartTLS():
            raise _bad("STARTTLS is not available")
        self._afterResponse = self._startTLS
        return b"Begin TLS negotiation now"

    def do_COMPRESS(self, tag: bytes, args: Arguments) -> bytes:
        """
        COMPRESS DEFLATE (RFC 4978): after the tagged OK both directions
        are raw deflate (RFC 1951, no zlib header), inside TLS when TLS is
        active; once per connection.
        """
        mechanism = args.atom("compression mechanism").upper()
        args.end()
        if self._inflater is not None:
            raise IMAPError("Compression is already active", b"COMPRESSIONACTIVE")
        if mechanism != b"DEFLATE":
            raise _bad("Unknown compression mechanism")
        self._afterResponse = self._startCompression
        return b"DEFLATE active"

    def _startCompression(self) -> None:
        if self._closed:
            return
        self._inflater = zlib.decompressobj(-15)
        self.transport = cast(netutil.IConnectionTransport, _DeflatingTransport(self.transport))
        pending = self._framer.takeBuffered()
        if pending:
            # Sent right after COMPRESS, so already compressed.
            self.dataReceived(pending)

    def _startTLS(self) -> None:
        self._framer.close()
        self._skipReasons = []
        self._tls = True
        self.transport.startTLS(self.contextFactory)

    @defer.inlineCallbacks
    def do_LOGIN(self, tag: bytes, args: Arguments) -> Any:
        user = args.astring("user name")
        password = args.astring("password")
        args.end()
        if not self._cleartextAllowed():
            raise IMAPError("Login over an unencrypted connection is not allowed", b"PRIVACYREQUIRED")
        result = yield self._login(user, password)
        return result

    @defer.inlineCallbacks
    def do_AUTHENTICATE(self, tag: bytes, args: Arguments) -> Any:
        """
        AUTHENTICATE (RFC 3501 6.2.2) with an optional initial response
        (SASL-IR, RFC 4959), run by the shared SASL layer
        (L{mailplat.auth.sasl}).
        """
        name = args.atom("mechanism").upper().decode("ascii", "replace")
        initial: Optional[bytes] = None
        if len(args):
            initial = args.atom("initial response")
        args.end()
        if name not in sasl.mechanismsFor(self.portal, True):
            raise IMAPError("Unsupported authentication mechanism", b"CANNOT")
        if not self._cleartextAllowed():
            raise IMAPError("Authentication over an unencrypted connection is not allowed", b"PRIVACYREQUIRED")
        response: Optional[bytes] = None
        if initial is not None:
            try:
                response = sasl.decodeResponse(initial, initial=True)
            except sasl.SASLError as e:
                raise _bad(str(e))
        mechanism = sasl.makeMechanism(name, self.portal, self.hostname)
        while True:
            try:
                result = yield mechanism.respond(response)
            except sasl.SASLError as e:
                raise _bad(str(e))
            except LoginFailed:
                result = None
            if not isinstance(result, sasl.Challenge):
                break
            line = yield self._saslLine(result.encoded())
            try:
                response = sasl.decodeResponse(line)
            except sasl.SASLError as e:
                raise _bad(str(e))
        if result is None:
            # A response that can only fail (a bad user name, another
            # authorisation identity): counted like a wrong password.
            self._loginFailed()
        outcome = yield self._loginWith(result, mechanism)
        return outcome

    @defer.inlineCallbacks
    def _saslLine(self, challenge: bytes) -> Any:
        """
        Send a continuation with C{challenge} (base64) and read the
        client's response line.
        """
        self._write(b"+ " + challenge)
        line = yield self._readLine()
        if isinstance(line, LineTooLong):
            raise _bad("Authentication response too long")
        return line

    def _loginFailed(self) -> NoReturn:
        """
        Count a failed login (closing after L{MAX_AUTH_FAILURES}) and end
        the command with C{NO [AUTHENTICATIONFAILED]}.
        """
        self._authFailures += 1
        if self._authFailures >= MAX_AUTH_FAILURES:
            self._write(b"* BYE Too many failed logins")
            self.state = LOGOUT
        raise IMAPError("Authentication failed.", b"AUTHENTICATIONFAILED")

    def _login(self, user: bytes, password: bytes) -> Any:
        try:
            name = normalizeAddress(user.decode("utf-8"))
        except UnicodeDecodeError:
            name = None
        if not name:
            self._loginFailed()
        return self._loginWith(UsernamePassword(name.encode("utf-8"), password))

    @defer.inlineCallbacks
    def _loginWith(self, credentials: Any, mechanism: Optional[sasl.Mechanism] = None) -> Any:
        """
        Log in through the portal; when the SASL C{mechanism} has
        server-final data, send it and wait for the client's empty
        response first.
        """
        account = None
        try:
            # The client's address is the mind: the throttling portal
            # counts failures per address as well as per account.
            iface, account, logout = yield self.portal.login(
                credentials, netutil.peerHost(self.transport), IAccount
            )
        except LoginThrottled:
            raise IMAPError("Too many failed logins; try again later", b"UNAVAILABLE")
        except LoginFailed:
            account = None
        except Exception:
            log.failure("IMAP login of {name!r} failed", name=getattr(credentials, "username", None))
            raise IMAPError("Login is unavailable now; try again later", b"UNAVAILABLE")
        if account is None:
            self._loginFailed()
        final = mechanism.serverFinal() if mechanism is not None else None
        if final is not None and not self._closed:
            try:
                line = yield self._saslLine(base64.b64encode(final))
            except BaseException:
                logout()
                raise
            if line.strip() not in (b"", b"="):
                logout()
                if line.strip() == b"*":
                    raise _bad("Authentication cancelled")
                raise _bad("Expected an empty response")
        if self._closed:
            logout()
            return b"Logged in"
        self.account = account
        self._logout = logout
        self.state = AUTHENTICATED
        return b"[CAPABILITY " + self._capabilities() + b"] Logged in"

    # -- authenticated -----------------------------------------------------

    def do_ENABLE(self, tag: bytes, args: Arguments) -> bytes:
        """
        ENABLE (RFC 5161): turn on the extensions named that we know of;
        unknown names are ignored.
        """
        names = args.rest()
        if not names:
            raise _bad("ENABLE needs at least one capability")
        newly = []
        for token in names:
            if not isinstance(token, Atom):
                raise _bad("ENABLE takes capability names")
            name = bytes(token).upper()
            if name in ENABLEABLE and name not in self.enabled:
                self.enabled.add(name)
                newly.append(name)
        if b"QRESYNC" in self.enabled:
            # RFC 7162 3.2: QRESYNC implies CONDSTORE.
            self.qresync = True
            self.enabled.add(b"CONDSTORE")
        if b"CONDSTORE" in self.enabled:
            self.condstore = True
        self._write(b"* ENABLED" + b"".join(b" " + n for n in newly))
        return b"ENABLE completed"

    def _enableCondstore(self) -> None:
        """
        A CONDSTORE-enabling command was used (RFC 7162 3.1).
        """
        self.condstore = True
        self.enabled.add(b"CONDSTORE")

    def do_SELECT(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._select(args, readOnly=False)

    def do_EXAMINE(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._select(args, readOnly=True)

    @defer.inlineCallbacks
    def _select(self, args: Arguments, readOnly: bool) -> Any:
        """
        SELECT and EXAMINE, with the CONDSTORE parameter and the QRESYNC
        parameter (RFC 7162 3.2).

        Replacing a selected mailbox sends C{* OK [CLOSED]} first (RFC 7162
        3.2).  With a QRESYNC parameter whose UIDVALIDITY matches, the
        usual responses are followed by C{* VANISHED (EARLIER)} and by a
        FETCH (UID, FLAGS, MODSEQ) of each message changed since the
        client's modseq; see L{_vanishedEarlier} for what VANISHED reports.
        """
        name = self._mailboxName(args)
        resync: Optional[Tuple[int, int, Optional[SequenceSet]]] = None
        if len(args):
            params = args.parenList("select parameters")
            n = 0
            while n < len(params):
                param = params[n]
                word = bytes(param).upper() if isinstance(param, Atom) else b""
                if word == b"CONDSTORE":
                    self._enableCondstore()
                elif word == b"QRESYNC" and resync is None and n + 1 < len(params):
                    if not self.qresync:
                        raise _bad("QRESYNC is not enabled")
                    n += 1
                    resync = _qresyncParameter(params[n])
                else:
                    raise _bad("Unknown SELECT parameter")
                n += 1
        args.end()
        replacing = self.view is not None
        self._deselect()
        if replacing:
            self._write(b"* OK [CLOSED] Previous mailbox closed")
        target, mailbox = yield self._namespaces().open(name, acl.COMMAND_RIGHTS["SELECT"], "read")
        if self._closed:
            return b""
        # Without a right to change anything the mailbox is read-only.
        forced = not readOnly and not any(right in target.rights for right in acl.WRITE_RIGHTS)
        readOnly = readOnly or forced
        view = SelectedView(mailbox, readOnly, [], set())
        view.rights = target.rights
        if target.shared:
            view.sharedName = target.name
            view.rightsAt = self.clock.seconds()
        self.view = view
        mailbox.addListener(self)
        try:
            generation = view.generation
            infos = yield mailbox.listMessages()
            # (One pass for the UIDs, which the kept listing and the view
            # both hold: a pass over 100,000 infos costs 2 ms.)
            uids = array("I", map(_UID_OF, infos))
            view.keepListing(list(infos), generation, uids)
            recent: Set[int] = set()
            if not readOnly:
                recent = set((yield mailbox.claimRecent()))
            status = yield mailbox.status()
        except BaseException:
            self._deselect()
            raise
        if self.view is not view:
            return b""
        view.uids = array("I", uids)
        view.modseqs = array("Q", map(_MODSEQ_OF, infos))
        view.recent = recent
        self.state = SELECTED
        # (The union of the flag sets made in C, then the few distinct
        # flags looked at; the first unseen message found by a scan that
        # stops there.)
        keywords = {flag for flag in frozenset().union(*[info.flags for info in infos]) if not flag.startswith("\\")}
        firstUnseen = next((n for n, info in enumerate(infos, 1) if "\\Seen" not in info.flags), 0)
        flags = SYSTEM_FLAG_LIST + sorted(keywords, key=str.lower)
        self._write(b"* FLAGS (" + " ".join(flags).encode("utf-8", "replace") + b")")
        self._write(b"* %d EXISTS" % (len(infos),))
        self._write(b"* %d RECENT" % (view.recentCount() if not readOnly else status.recent,))
        if firstUnseen:
            self._write(b"* OK [UNSEEN %d] First unseen message" % (firstUnseen,))
        if readOnly:
            self._write(b"* OK [PERMANENTFLAGS ()] Read-only mailbox")
        elif not acl.canChangeFlags(view.rights) or "w" not in view.rights:
            self._write(b"* OK [PERMANENTFLAGS " + acl.permanentFlags(view.rights) + b"] Flags permitted")
        else:
            self._write(b"* OK [PERMANENTFLAGS " + PERMANENT_FLAGS + b"] Flags permitted")
        self._write(b"* OK [UIDVALIDITY %d] UIDs valid" % (mailbox.uidValidity,))
        uidNext = status.uidNext
        if infos and infos[-1].uid >= uidNext:
            uidNext = infos[-1].uid + 1
        self._write(b"* OK [UIDNEXT %d] Predicted next UID" % (uidNext,))
        highest = max([status.highestModseq] + [i.modseq for i in infos[-1:]])
        self._write(b"* OK [HIGHESTMODSEQ %d] Highest modseq" % (highest,))
        if resync is not None and resync[0] == mailbox.uidValidity:
            _, sinceModseq, knownUids = resync
            if knownUids is None:
                knownUids = SequenceSet([(1, None)])
            vanished = self._vanishedEarlier(view.uids, knownUids, uidNext - 1)
            if vanished:
                self._write(b"* VANISHED (EARLIER) " + vanished)
            for n, info in enumerate(infos, 1):
                if info.modseq > sinceModseq:
                    self._write(
                        b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))"
                        % (n, info.uid, _flagsWire(info.flags, view.isRecent(info.uid)), info.modseq)
                    )
        if readOnly:
            return b"[READ-ONLY] SELECT completed" if forced else b"[READ-ONLY] EXAMINE completed"
        return b"[READ-WRITE] SELECT completed"

    def _vanishedEarlier(self, present: Sequence[int], uids: SequenceSet, largest: int) -> bytes:
        """
        The UIDs for a C{VANISHED (EARLIER)} response (RFC 7162 3.2; to
        SELECT with QRESYNC and to UID FETCH with VANISHED): the members of
        C{uids} from 1 to C{largest} (which also stands for C{*}) that are
        not in C{present}.

        The store keeps no record of expunged UIDs (L{IMailbox} has none),
        so the server cannot tell a UID expunged after the client's modseq
        from one expunged before it, or from one that never existed.  It
        therefore reports every such UID: RFC 7162 allows a server
        without an expunge history to include UIDs expunged earlier than
        the client's modseq, and a client ignores UIDs it does not have.
        The answer is bounded by the set the client sent (by default
        C{1:UIDNEXT-1}) and is built range by range, so its size is about
        two ranges per message still present, however large the UIDs.
        Messages expunged by another session but not yet reported to this
        one are still in C{present} and so not reported here; the next
        plain C{VANISHED} does.  The C{seq-match-data} of SELECT only helps
        a server narrow its search and is not needed for this.

        @param present: the sorted UIDs that must not be reported (the
            session's view, plus any message not reported yet).
        @param uids: the UID set the client asked about.
        @param largest: the highest UID considered (UIDNEXT - 1); also
            the value of C{*}.
        @return: the uid-set to report (C{1:3,7}), empty for none.
        """
        ranges: List[bytes] = []

        def gap(low: int, high: int) -> None:
            if low <= high:
                ranges.append(b"%d" % (low,) if low == high else b"%d:%d" % (low, high))

        for low, high in uids.resolve(largest):
            low, high = max(low, 1), min(high, largest)
            i = bisect.bisect_left(present, low)
            while low <= high and i < len(present) and present[i] <= high:
                gap(low, present[i] - 1)
                low = present[i] + 1
                i += 1
            gap(low, high)
        return b",".join(ranges)

    @defer.inlineCallbacks
    def do_CREATE(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args, create=True)
        use: Optional[str] = None
        if len(args):
            params = args.parenList("create parameters")
            if len(params) != 2 or not isinstance(params[0], Atom) or bytes(params[0]).upper() != b"USE":
                raise _bad("Unknown CREATE parameter")
            if not isinstance(params[1], list) or not all(isinstance(t, Atom) for t in params[1]):
                raise _bad("USE takes a list of special-use attributes")
            uses = []
            for token in params[1]:
                known = [a for a in SPECIAL_USE if a.lower() == bytes(token).decode("ascii", "replace").lower()]
                if not known:
                    raise IMAPError("Unsupported special-use attribute", b"USEATTR")
                uses.append(known[0])
            if len(set(uses)) > 1:
                raise IMAPError("A mailbox takes one special-use attribute here", b"USEATTR")
            use = uses[0] if uses else None
        args.end()
        yield self._namespaces().create(name, use)
        return b"CREATE completed"

    @defer.inlineCallbacks
    def do_DELETE(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args)
        args.end()
        if name == "INBOX":
            raise IMAPError("INBOX cannot be deleted", b"CANNOT")
        owner, deleted = yield self._namespaces().delete(name)
        if self.cache.index is not None:
            self.cache.index.dropMailbox(owner, deleted)
        return b"DELETE completed"

    @defer.inlineCallbacks
    def do_RENAME(self, tag: bytes, args: Arguments) -> Any:
        old = self._mailboxName(args)
        new = self._mailboxName(args, create=True)
        args.end()
        if new == "INBOX":
            raise IMAPError("Cannot rename a mailbox to INBOX", b"ALREADYEXISTS")
        owner, renamed = yield self._namespaces().rename(old, new)
        if self.cache.index is not None:
            # (Its messages are indexed again under the new name when a
            # search needs them.)
            self.cache.index.dropMailbox(owner, renamed, inferiors=True)
        return b"RENAME completed"

    @defer.inlineCallbacks
    def do_SUBSCRIBE(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args)
        args.end()
        if acl.isShared(name):
            yield self._namespaces().resolve(name, acl.COMMAND_RIGHTS["SUBSCRIBE"], "subscribe to")
        yield self.account.subscribe(name)  # type: ignore[union-attr]
        return b"SUBSCRIBE completed"

    @defer.inlineCallbacks
    def do_UNSUBSCRIBE(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args)
        args.end()
        yield self.account.unsubscribe(name)  # type: ignore[union-attr]
        return b"UNSUBSCRIBE completed"

    def _listArgs(self, args: Arguments) -> Tuple[str, str]:
        reference = self._decodeName(args.astring("reference"))
        pattern = self._decodeName(args.listMailbox())
        args.end()
        return reference, pattern

    def _listPatterns(self, args: Arguments) -> List[str]:
        """
        One LIST pattern or a parenthesised list of them (RFC 5258).
        """
        if not isinstance(args.peek(), list):
            return [self._decodeName(args.listMailbox())]
        tokens = args.parenList("mailbox patterns")
        if not tokens:
            raise _bad("Empty list of mailbox patterns")
        patterns = []
        for token in tokens:
            if not isinstance(token, (Atom, QuotedString, Literal)):
                raise _bad("Invalid mailbox pattern")
            patterns.append(self._decodeName(bytes(token)))
        return patterns

    @defer.inlineCallbacks
    def do_LIST(self, tag: bytes, args: Arguments) -> Any:
        """
        LIST, with the selection options SUBSCRIBED, REMOTE,
        RECURSIVEMATCH and SPECIAL-USE, several patterns, and the return
        options CHILDREN, SUBSCRIBED, SPECIAL-USE and STATUS
        (RFC 5258, RFC 6154, RFC 5819).

        Child and special-use attributes are always returned (the store
        knows them).  With RECURSIVEMATCH a matching name gets
        C{("CHILDINFO" (...))} when a descendant that the patterns do not
        match meets the selection criteria.
        """
        selection: Set[bytes] = set()
        if isinstance(args.peek(), list):
            for token in args.parenList("selection options"):
                option = bytes(token).upper() if isinstance(token, Atom) else b""
                if option not in (b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"):
                    raise _bad("Unknown LIST selection option")
                selection.add(option)
            if b"RECURSIVEMATCH" in selection and not selection - {b"REMOTE", b"RECURSIVEMATCH"}:
                raise _bad("RECURSIVEMATCH needs another selection option")
        reference = self._decodeName(args.astring("reference"))
        patterns = self._listPatterns(args)
        returns: Set[bytes] = set()
        statusItems: Optional[List[bytes]] = None
        if len(args):
            if args.atom("RETURN").upper() != b"RETURN":
                raise _bad("Expected RETURN")
            options = args.parenList("return options")
            i = 0
            while i < len(options):
                option = bytes(options[i]).upper() if isinstance(options[i], Atom) else b""
                if option == b"STATUS" and statusItems is None and i + 1 < len(options) and isinstance(options[i + 1], list):
                    statusItems = self._statusItems(options[i + 1])
                    i += 2
                    continue
                if option not in (b"CHILDREN", b"SUBSCRIBED", b"SPECIAL-USE"):
                    raise _bad("Unknown LIST return option")
                returns.add(option)
                i += 1
        args.end()
        if patterns == [""] and not selection:
            root = reference.split(HIERARCHY_DELIMITER, 1)[0] + HIERARCHY_DELIMITER if HIERARCHY_DELIMITER in reference else ""
            self._write(b'* LIST (\\Noselect) "/" ' + _mailboxWire(root))
            return b"LIST completed"
        matchers = [_patternMatcher(reference + p) for p in patterns if p]

        def matches(name: str) -> bool:
            return any(m(name) for m in matchers)

        account = self.account
        assert account is not None
        entries = yield account.listMailboxes()
        namespaces = self._namespaces()
        attrsOf = {e.name: set(e.attributes) for e in entries if not (namespaces.enabled and acl.isShared(e.name))}
        if self.cache.index is not None:
            # Every mailbox of the account is known here: the index can let
            # go of those deleted behind IMAP's back.
            self.cache.index.keepOnly(account.address, attrsOf)
        if namespaces.enabled and any(acl.patternMayReachShared(reference + p) for p in patterns):
            attrsOf.update((yield namespaces.listShared()))
        wantSubscribed = b"SUBSCRIBED" in selection or b"SUBSCRIBED" in returns
        subs: Set[str] = set()
        if wantSubscribed:
            subs = set((yield account.listSubscriptions()))
        criteria = [c for c in (b"SUBSCRIBED", b"SPECIAL-USE") if c in selection]

        def meets(name: str) -> bool:
            if b"SUBSCRIBED" in selection and name not in subs:
                return False
            if b"SPECIAL-USE" in selection and not attrsOf.get(name, set()) & SPECIAL_USE:
                return False
            return True

        names = set(attrsOf) | (subs if b"SUBSCRIBED" in selection else set())
        found: Dict[str, bool] = {}
        for name in names:
            if meets(name):
                if matches(name):
                    found.setdefault(name, False)
                elif b"RECURSIVEMATCH" in selection:
                    parts = name.split(HIERARCHY_DELIMITER)
                    for k in range(1, len(parts)):
                        prefix = HIERARCHY_DELIMITER.join(parts[:k])
                        if matches(prefix):
                            found[prefix] = True
        ordered = sorted(found, key=lambda n: (n != "INBOX", n))
        for name in ordered:
            attrs = attrsOf.get(name)
            if attrs is None:
                attrs = {"\\NonExistent"}
            else:
                attrs = set(attrs)
            if wantSubscribed and name in subs:
                attrs.add("\\Subscribed")
            line = (
                b"* LIST (" + " ".join(sorted(attrs, key=str.lower)).encode("ascii", "replace")
                + b') "/" ' + _mailboxWire(name)
            )
            if found[name]:
                line += b' ("CHILDINFO" (' + b" ".join(b'"' + c + b'"' for c in criteria) + b"))"
            self._write(line)
            if statusItems is not None and not attrs & {"\\Noselect", "\\NonExistent"}:
                try:
                    _, mailbox = yield namespaces.open(name, acl.COMMAND_RIGHTS["STATUS"], "read the status of")
                    status = yield self._statusLine(name, mailbox, statusItems)
                except (NoSuchMailbox, MailboxError, acl.NoPermission):
                    continue
                self._write(status)
        return b"LIST completed"

    @defer.inlineCallbacks
    def do_LSUB(self, tag: bytes, args: Arguments) -> Any:
        reference, pattern = self._listArgs(args)
        if not pattern:
            self._write(b'* LSUB (\\Noselect) "/" ""')
            return b"LSUB completed"
        full = reference + pattern
        matcher = _patternMatcher(full)
        subscribed = yield self.account.listSubscriptions()  # type: ignore[union-attr]
        subs = set(subscribed)
        found: Dict[str, bool] = {}
        for name in subscribed:
            if matcher(name):
                found[name] = False
            elif full.endswith("%"):
                parts = name.split(HIERARCHY_DELIMITER)
                for k in range(1, len(parts)):
                    prefix = HIERARCHY_DELIMITER.join(parts[:k])
                    if prefix not in subs and matcher(prefix):
                        found.setdefault(prefix, True)
        for name in sorted(found):
            attrs = b"\\Noselect" if found[name] else b""
            self._write(b"* LSUB (" + attrs + b') "/" ' + _mailboxWire(name))
        return b"LSUB completed"

    def do_NAMESPACE(self, tag: bytes, args: Arguments) -> bytes:
        args.end()
        if self._namespaces().enabled:
            self._write(acl.NAMESPACE_RESPONSE)
        else:
            self._write(b'* NAMESPACE (("" "/")) NIL NIL')
        return b"NAMESPACE completed"

    @defer.inlineCallbacks
    def do_STATUS(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args)
        wanted = self._statusItems(args.parenList("status items"))
        args.end()
        _, mailbox = yield self._namespaces().open(name, acl.COMMAND_RIGHTS["STATUS"], "read the status of")
        line = yield self._statusLine(name, mailbox, wanted)
        self._write(line)
        return b"STATUS completed"

    def _statusItems(self, items: list) -> List[bytes]:
        """
        The upper-cased STATUS items of a list, checked.
        """
        wanted = []
        for item in items:
            if not isinstance(item, Atom):
                raise _bad("Invalid status item")
            upper = bytes(item).upper()
            if upper not in STATUS_ITEMS:
                raise _bad(f"Unknown status item {upper.decode('ascii', 'replace')}")
            if upper == b"HIGHESTMODSEQ":
                self._enableCondstore()
            wanted.append(upper)
        if not wanted:
            raise _bad("Empty status item list")
        return wanted

    @defer.inlineCallbacks
    def _statusLine(self, name: str, mailbox: IMailbox, wanted: List[bytes]) -> Any:
        """
        The C{* STATUS} line of a mailbox.
        """
        status = yield mailbox.status()
        deleted = deletedStorage = 0
        if b"DELETED" in wanted or b"DELETED-STORAGE" in wanted:
            # RFC 9208 4.2.x: what an EXPUNGE would remove / reclaim (KB).
            infos = yield mailbox.listMessages()
            for info in infos:
                if "\\Deleted" in info.flags:
                    deleted += 1
                    deletedStorage += info.size
        values = {
            b"DELETED": deleted,
            b"DELETED-STORAGE": (deletedStorage + 1023) // 1024,
            b"MESSAGES": status.messages,
            b"RECENT": status.recent,
            b"UIDNEXT": status.uidNext,
            b"UIDVALIDITY": status.uidValidity,
            b"UNSEEN": status.unseen,
            b"HIGHESTMODSEQ": status.highestModseq,
        }
        body = b" ".join(b"%s %d" % (item, values[item]) for item in wanted)
        return b"* STATUS " + _mailboxWire(name) + b" (" + body + b")"

    @defer.inlineCallbacks
    def do_APPEND(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args)
        flags: List[str] = []
        date: Optional[float] = None
        if isinstance(args.peek(), list):
            flags = args.flagList()
        if isinstance(args.peek(), QuotedString) and len(args) > 1:
            date = parseDateTime(args.string("date-time"))
        message = args.literalMessage()
        args.end()
        size = message.size if isinstance(message, LiteralFile) else len(message)
        if size == 0:
            raise IMAPError("Cannot append an empty message")
        if size > self.maxLiteralSize:
            raise IMAPError("Message too large", b"TOOBIG")
        try:
            target, mailbox = yield self._namespaces().open(name, acl.COMMAND_RIGHTS["APPEND"], "append to")
        except NoSuchMailbox:
            raise IMAPError("Mailbox does not exist", b"TRYCREATE")
        flags = acl.allowedFlags(target.rights, flags)
        yield self._checkQuota(size, 1, target.account)
        source = message.file if isinstance(message, LiteralFile) else BytesIO(message)
        source.seek(0)
        uid = yield mailbox.append(source, flags, date)
        if not isinstance(message, LiteralFile):
            self._remember(mailbox, uid, bytes(message))
        return b"[APPENDUID %d %d] APPEND completed" % (mailbox.uidValidity, uid)

    @defer.inlineCallbacks
    def _checkQuota(self, octets: int, messages: int, account: Optional[IAccount] = None) -> Any:
        """
        Refuse with C{NO [OVERQUOTA]} (RFC 9208 4.3) when adding
        C{messages} messages of C{octets} octets would pass a quota (of
        C{account}, the mailbox's owner; the session's own by default).
        """
        if not (self.quotaBytes or self.quotaMessages):
            return
        from mailplat.quota import OverQuota, checkQuota

        try:
            yield checkQuota(account or self.account, self.quotaBytes, octets, self.quotaMessages, messages)  # type: ignore[arg-type]
        except OverQuota:
            raise IMAPError("Quota exceeded", b"OVERQUOTA")

    def _quotaRoot(self, args: Arguments) -> bytes:
        root = args.astring("quota root")
        if root != b"" or not (self.quotaBytes or self.quotaMessages):
            raise IMAPError("No such quota root", b"NONEXISTENT")
        return root

    @defer.inlineCallbacks
    def _quotaLine(self) -> Any:
        """
        The C{* QUOTA ""} response of the account's one quota root.
        """
        from mailplat.quota import quotaUsage

        octets, messages = yield quotaUsage(self.account)  # type: ignore[arg-type]
        resources = []
        if self.quotaBytes:
            resources.append(b"STORAGE %d %d" % ((octets + 1023) // 1024, self.quotaBytes // 1024))
        if self.quotaMessages:
            resources.append(b"MESSAGE %d %d" % (messages, self.quotaMessages))
        return b'* QUOTA "" (' + b" ".join(resources) + b")"

    @defer.inlineCallbacks
    def do_GETQUOTA(self, tag: bytes, args: Arguments) -> Any:
        """
        GETQUOTA (RFC 9208 4.2.1): the only root is C{""}, the account.
        """
        self._quotaRoot(args)
        args.end()
        line = yield self._quotaLine()
        self._write(line)
        return b"GETQUOTA completed"

    @defer.inlineCallbacks
    def do_GETQUOTAROOT(self, tag: bytes, args: Arguments) -> Any:
        """
        GETQUOTAROOT (RFC 9208 4.2.2): every mailbox is under root C{""}.
        """
        name = self._mailboxName(args)
        args.end()
        target, _ = yield self._namespaces().open(name, acl.COMMAND_RIGHTS["STATUS"], "read the quota of")
        if not (self.quotaBytes or self.quotaMessages) or target.shared:
            self._write(b"* QUOTAROOT " + _mailboxWire(name))
            return b"GETQUOTAROOT completed"
        self._write(b"* QUOTAROOT " + _mailboxWire(name) + b' ""')
        line = yield self._quotaLine()
        self._write(line)
        return b"GETQUOTAROOT completed"

    def do_SETQUOTA(self, tag: bytes, args: Arguments) -> bytes:
        """
        SETQUOTA (RFC 9208 4.2.3): limits come from the configuration, so
        a well-formed request is refused.
        """
        args.astring("quota root")
        limits = args.parenList("resource limits")
        args.end()
        if len(limits) % 2 or not all(isinstance(t, Atom) for t in limits):
            raise _bad("SETQUOTA takes resource name and limit pairs")
        for n in range(1, len(limits), 2):
            if not bytes(limits[n]).isdigit():
                raise _bad("Invalid resource limit")
        raise IMAPError("Quotas are set by the server's configuration", b"NOPERM")

    @defer.inlineCallbacks
    def do_IDLE(self, tag: bytes, args: Arguments) -> Any:
        args.end()
        self._write(b"+ idling")
        self._idling = True
        try:
            if self.view is not None:
                yield self._sync(True)
            line = yield self._readLine()
        finally:
            self._idling = False
        if isinstance(line, LineTooLong) or line.strip().upper() != b"DONE":
            raise _bad("Expected DONE")
        return b"IDLE terminated"

    # -- access control lists (RFC 4314) -----------------------------------

    def _aclMailbox(self, args: Arguments) -> str:
        """
        The mailbox argument of an ACL command, decoded and validated.
        """
        if not self._namespaces().enabled:
            raise IMAPError("This server's mail store keeps no access control lists", b"CANNOT")
        return self._mailboxName(args)

    def _identifier(self, args: Arguments) -> Tuple[bytes, str]:
        raw = args.astring("identifier")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("Invalid identifier")
        return raw, acl.parseIdentifier(text)

    @defer.inlineCallbacks
    def do_SETACL(self, tag: bytes, args: Arguments) -> Any:
        """
        SETACL mailbox identifier [+|-]rights (RFC 4314 3.1).
        """
        name = self._aclMailbox(args)
        _, identifier = self._identifier(args)
        rights = args.astring("access rights").decode("ascii", "replace")
        args.end()
        yield self._namespaces().setACL(name, identifier, rights)
        return b"SETACL completed"

    @defer.inlineCallbacks
    def do_DELETEACL(self, tag: bytes, args: Arguments) -> Any:
        """
        DELETEACL mailbox identifier (RFC 4314 3.2).
        """
        name = self._aclMailbox(args)
        _, identifier = self._identifier(args)
        args.end()
        yield self._namespaces().setACL(name, identifier, None)
        return b"DELETEACL completed"

    @defer.inlineCallbacks
    def do_GETACL(self, tag: bytes, args: Arguments) -> Any:
        """
        GETACL mailbox (RFC 4314 3.3): the owner, then every entry.
        """
        name = self._aclMailbox(args)
        args.end()
        entries = yield self._namespaces().getACL(name)
        line = b"* ACL " + _mailboxWire(name)
        for identifier, rights in entries:
            line += b" " + astring(identifier) + b" " + acl.rightsWire(rights)
        self._write(line)
        return b"GETACL completed"

    @defer.inlineCallbacks
    def do_LISTRIGHTS(self, tag: bytes, args: Arguments) -> Any:
        """
        LISTRIGHTS mailbox identifier (RFC 4314 3.4).
        """
        name = self._aclMailbox(args)
        raw, identifier = self._identifier(args)
        args.end()
        required, optional = yield self._namespaces().listRights(name, identifier)
        line = b"* LISTRIGHTS " + _mailboxWire(name) + b" " + astring(raw) + b" " + acl.rightsWire(required)
        if optional:
            line += b" " + optional.encode("ascii")
        self._write(line)
        return b"LISTRIGHTS completed"

    @defer.inlineCallbacks
    def do_MYRIGHTS(self, tag: bytes, args: Arguments) -> Any:
        """
        MYRIGHTS mailbox (RFC 4314 3.5).
        """
        name = self._aclMailbox(args)
        args.end()
        rights = yield self._namespaces().myRights(name)
        self._write(b"* MYRIGHTS " + _mailboxWire(name) + b" " + acl.rightsWire(rights))
        return b"MYRIGHTS completed"

    # -- selected ----------------------------------------------------------

    def do_CHECK(self, tag: bytes, args: Arguments) -> bytes:
        args.end()
        return b"CHECK completed"

    @defer.inlineCallbacks
    def do_CLOSE(self, tag: bytes, args: Arguments) -> Any:
        args.end()
        view = self.view
        assert view is not None
        self._deselect()
        if not view.readOnly and acl.COMMAND_RIGHTS["EXPUNGE"] in view.rights:
            yield view.mailbox.expunge()
        return b"CLOSE completed"

    def do_UNSELECT(self, tag: bytes, args: Arguments) -> bytes:
        args.end()
        self._deselect()
        return b"UNSELECT completed"

    @defer.inlineCallbacks
    def do_EXPUNGE(self, tag: bytes, args: Arguments) -> Any:
        args.end()
        view = self._requireRights(acl.COMMAND_RIGHTS["EXPUNGE"], "expunge messages from")
        yield view.mailbox.expunge()
        view.changed()
        return b"EXPUNGE completed"

    def do_UID(self, tag: bytes, args: Arguments) -> Any:
        sub = args.atom("UID command").upper()
        if sub == b"FETCH":
            return self._fetch(args, uid=True)
        if sub == b"STORE":
            return self._store(args, uid=True)
        if sub == b"SEARCH":
            return self._search(tag, args, uid=True)
        if sub == b"COPY":
            return self._copy(args, uid=True)
        if sub == b"MOVE":
            return self._move(args, uid=True)
        if sub == b"SORT":
            return self._sort(args, uid=True)
        if sub == b"THREAD":
            return self._thread(args, uid=True)
        if sub == b"EXPUNGE":
            return self._uidExpunge(args)
        raise _bad("Unknown UID command")

    @defer.inlineCallbacks
    def _uidExpunge(self, args: Arguments) -> Any:
        seqset = args.sequenceSet()
        args.end()
        view = self._requireRights(acl.COMMAND_RIGHTS["EXPUNGE"], "expunge messages from")
        uids = [view.uids[i] for i in self._resolve(seqset, uid=True)]
        if uids:
            yield view.mailbox.expunge(uids)
        view.changed()
        # UID EXPUNGE may report its own expunges (RFC 4315).
        yield self._sync(True)
        return b"UID EXPUNGE completed"

    def do_COPY(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._copy(args, uid=False)

    @defer.inlineCallbacks
    def _copy(self, args: Arguments, uid: bool) -> Any:
        seqset = args.sequenceSet()
        name = self._mailboxName(args)
        args.end()
        view = self.view
        assert view is not None
        uids = [view.uids[i] for i in self._resolve(seqset, uid)]
        uids = [u for u in uids if u not in view.ghosts]
        destination, target = yield self._copyTarget(name)
        if not uids:
            return b"COPY completed"
        if self.quotaBytes or self.quotaMessages:
            infos = yield self._currentInfos(uids)
            yield self._checkQuota(sum(i.size for i in infos.values()), len(infos), destination.account)
        pairs = yield view.mailbox.copyTo(uids, target)
        if not pairs:
            return b"COPY completed"
        yield self._dropForbiddenFlags(destination, target, pairs)
        self.cache.copied(self._cacheKey(view, 0)[:3], self._mailboxKey(target, 0)[:3], pairs)
        source = _compressUIDs([p[0] for p in pairs])
        dest = _compressUIDs([p[1] for p in pairs])
        return b"[COPYUID %d %s %s] COPY completed" % (target.uidValidity, source, dest)

    def do_MOVE(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._move(args, uid=False)

    @defer.inlineCallbacks
    def _move(self, args: Arguments, uid: bool) -> Any:
        """
        MOVE and UID MOVE (RFC 6851): copy, then expunge the originals;
        C{COPYUID} goes in an untagged OK before the EXPUNGE responses.
        """
        seqset = args.sequenceSet()
        name = self._mailboxName(args)
        args.end()
        view = self._requireRights(acl.COMMAND_RIGHTS["MOVE-SOURCE"], "move messages out of")
        uids = [view.uids[i] for i in self._resolve(seqset, uid)]
        uids = [u for u in uids if u not in view.ghosts]
        destination, target = yield self._copyTarget(name)
        if not uids:
            return b"MOVE completed"
        pairs = yield view.mailbox.copyTo(uids, target)
        if not pairs:
            return b"MOVE completed"
        yield self._dropForbiddenFlags(destination, target, pairs)
        self.cache.copied(self._cacheKey(view, 0)[:3], self._mailboxKey(target, 0)[:3], pairs)
        source = _compressUIDs([p[0] for p in pairs])
        dest = _compressUIDs([p[1] for p in pairs])
        self._write(b"* OK [COPYUID %d %s %s] Moved" % (target.uidValidity, source, dest))
        yield view.mailbox.expunge([p[0] for p in pairs], requireDeleted=False)
        view.changed()
        yield self._sync(True)
        return b"MOVE completed"

    def do_STORE(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._store(args, uid=False)

    @defer.inlineCallbacks
    def _store(self, args: Arguments, uid: bool) -> Any:
        seqset = args.sequenceSet()
        unchangedSince: Optional[int] = None
        if isinstance(args.peek(), list):
            modifiers = args.parenList("store modifiers")
            if len(modifiers) != 2 or not isinstance(modifiers[0], Atom) or bytes(modifiers[0]).upper() != b"UNCHANGEDSINCE":
                raise _bad("Unknown STORE modifier")
            unchangedSince = _modseqValue(modifiers[1])
            self._enableCondstore()
        item = args.atom("store item").upper()
        silent = item.endswith(b".SILENT")
        if silent:
            item = item[: -len(b".SILENT")]
        modes = {b"FLAGS": "set", b"+FLAGS": "add", b"-FLAGS": "remove"}
        if item not in modes:
            raise _bad("Invalid STORE item")
        if isinstance(args.peek(), list):
            flags = args.flagList()
        else:
            flags = flagsFromTokens(args.rest())
        args.end()
        view = self._requireWritable()
        indexes = self._resolve(seqset, uid)
        uids = [view.uids[i] for i in indexes if view.uids[i] not in view.ghosts]
        failed: List[int] = []
        updated = []
        if uids and unchangedSince is not None:
            # The store tests and changes in one step under its own lock or
            # transaction, so no other session, process or node can change
            # a message in between (RFC 7162 3.1.3).
            outcome = yield view.mailbox.setFlags(
                uids, self._conditionalFlags(view, flags, modes[item]), modes[item], unchangedSince=unchangedSince
            )
            updated, failed = outcome.infos, outcome.modified
        elif uids:
            updated = yield self._setFlagsAllowed(view, uids, flags, modes[item])
        if self.view is not view:
            return b"STORE completed"
        view.patchListing(updated)
        view.ownFlagChanges(updated)
        for info in updated:
            index = view.indexOf(info.uid)
            if index < 0:
                continue
            view.modseqs[index] = info.modseq
            extra = b" UID %d" % (info.uid,) if uid or self.qresync else b""
            modseq = b" MODSEQ (%d)" % (info.modseq,) if self.condstore else b""
            if not silent:
                self._write(
                    b"* %d FETCH (FLAGS %s%s%s)"
                    % (index + 1, _flagsWire(info.flags, view.isRecent(info.uid)), extra, modseq)
                )
            elif self.condstore:
                # RFC 7162 3.1.3: sent even with .SILENT, for the modseq.
                self._write(b"* %d FETCH (%s)" % (index + 1, (extra + modseq).strip()))
        if failed:
            numbers = failed if uid else [view.indexOf(u) + 1 for u in failed]
            return b"[MODIFIED " + _compressUIDs(sorted(numbers)) + b"] Conditional STORE failed"
        return b"STORE completed"

    def do_FETCH(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._fetch(args, uid=False)

    @defer.inlineCallbacks
    def _fetch(self, args: Arguments, uid: bool) -> Any:
        """
        FETCH and UID FETCH, with the CHANGEDSINCE modifier (RFC 7162
        3.1) and, for UID FETCH after ENABLE QRESYNC, VANISHED (RFC 7162
        3.2): C{* VANISHED (EARLIER)} for the UIDs of the set no longer
        in the mailbox (see L{_vanishedEarlier}), before the FETCH
        responses.
        """
        seqset = args.sequenceSet()
        rest = args.rest()
        changedSince: Optional[int] = None
        vanished = False
        if len(rest) == 2 and isinstance(rest[1], list):
            modifiers = rest[1]
            n = 0
            while n < len(modifiers):
                word = bytes(modifiers[n]).upper() if isinstance(modifiers[n], Atom) else b""
                if word == b"CHANGEDSINCE" and changedSince is None and n + 1 < len(modifiers):
                    changedSince = _modseqValue(modifiers[n + 1])
                    n += 2
                elif word == b"VANISHED" and not vanished and uid and self.qresync:
                    vanished = True
                    n += 1
                else:
                    raise _bad("Unknown FETCH modifier")
            if vanished and changedSince is None:
                raise _bad("VANISHED needs CHANGEDSINCE")
            rest = rest[:1]
        atts = parseFetchAttributes(rest)
        hasModseq = any(isinstance(a, FetchAttribute) and a.name == "MODSEQ" for a in atts)
        if changedSince is not None or hasModseq:
            self._enableCondstore()
        if changedSince is not None and not hasModseq:
            atts.append(FetchAttribute("MODSEQ"))
        if uid and not any(isinstance(a, FetchAttribute) and a.name == "UID" for a in atts):
            atts.insert(0, FetchAttribute("UID"))
        view = self.view
        assert view is not None
        indexes = self._resolve(seqset, uid)
        if vanished:
            # Every message of the store counts as present, including any
            # that arrived since the last EXISTS.
            current = yield self._currentInfos(None)
            status = yield view.mailbox.status()
            if self.view is not view:
                return b"FETCH completed"
            present = sorted(set(view.uids).union(current))
            largest = max([status.uidNext - 1] + present[-1:])
            gone = self._vanishedEarlier(present, seqset, largest)
            if gone:
                self._write(b"* VANISHED (EARLIER) " + gone)
        infoNames = [a.name for a in atts if isinstance(a, FetchAttribute) and a.name in _INFO_ITEMS]
        if len(infoNames) == len(atts):
            complete = yield self._fetchInfoItems(view, indexes, infoNames, changedSince)
            if not complete:
                raise IMAPError("Some of the requested messages no longer exist", b"EXPUNGEISSUED")
            return b"FETCH completed"
        wanted = [(i, view.uids[i]) for i in indexes]
        infos = yield self._currentInfos([u for _, u in wanted])
        structural = {a.name for a in atts if isinstance(a, FetchAttribute) and a.name in ("ENVELOPE", "BODYSTRUCTURE", "BODY")}
        # ENVELOPE needs the header only: no message read whole (the
        # headers are read batch by batch below, each batch answered
        # before the next is read).
        headerOnly = structural == {"ENVELOPE"} and not any(isinstance(a, BodySection) for a in atts)
        if structural:
            yield self._loadSummaries(view, [u for _, u in wanted])
        if self.view is not view:
            return b"FETCH completed"
        if changedSince is not None:
            wanted = [(i, u) for i, u in wanted if u in infos and infos[u].modseq > changedSince]
        setSeen = not view.readOnly and "s" in view.rights and any(isinstance(a, BodySection) and not a.peek for a in atts)
        flagsChanged: Set[int] = set()
        if setSeen:
            unseen = [u for _, u in wanted if u in infos and "\\Seen" not in infos[u].flags]
            if unseen:
                updated = yield view.mailbox.setFlags(unseen, ["\\Seen"], "add")
                view.patchListing(updated)
                view.ownFlagChanges(updated)
                for info in updated:
                    infos[info.uid] = info
                    flagsChanged.add(info.uid)
                    index = view.indexOf(info.uid)
                    if index >= 0:
                        view.modseqs[index] = info.modseq
        hasFlags = any(isinstance(a, FetchAttribute) and a.name == "FLAGS" for a in atts)
        missing = False
        quick = not any(isinstance(a, BodySection) for a in atts)
        pending: List[bytes] = []
        pendingSize = 0
        # Streamed in batches: each batch's responses are made, written
        # and sent (a turn of the reactor) before the next batch is
        # worked on, so the client reads while the server works.
        batch = _STREAM_FIRST
        done = 0
        summaries: Dict[int, Any] = {}
        while done < len(wanted):
            if done:
                if pending:
                    self._writeRaw(b"".join(pending))
                    pending, pendingSize = [], 0
                yield self._sent()
                if self._closed:
                    return b""
                if self.view is not view:
                    return b"FETCH completed"
            part = wanted[done : done + batch]
            done += len(part)
            batch = HEADER_BATCH
            if headerOnly:
                # (Held here: a mailbox bigger than the cache keeps them.)
                summaries = yield self._headerSummaries(view, [u for _, u in part if u in infos])
                if self.view is not view:
                    return b"FETCH completed"
            for index, u in part:
                info = infos.get(u)
                if info is None or u in view.ghosts:
                    missing = True
                    continue
                addFlags = u in flagsChanged and not hasFlags
                if quick:
                    line = self._fetchQuick(view, index, info, atts, addFlags, summaries.get(u) if headerOnly else None)
                    if line is not None:
                        pending.append(line)
                        pendingSize += len(line)
                        if pendingSize >= 65536:
                            self._writeRaw(b"".join(pending))
                            pending, pendingSize = [], 0
                        continue
                if pending:
                    self._writeRaw(b"".join(pending))
                    pending, pendingSize = [], 0
                ok = yield self._fetchOne(view, index, info, atts, addFlags=addFlags)
                if not ok:
                    missing = True
                if self._closed:
                    return b""
        if pending:
            self._writeRaw(b"".join(pending))
        if missing:
            raise IMAPError("Some of the requested messages no longer exist", b"EXPUNGEISSUED")
        return b"FETCH completed"

    @defer.inlineCallbacks
    def _fetchInfoItems(
        self, view: SelectedView, indexes: List[int], names: List[str], changedSince: Optional[int]
    ) -> Any:
        """
        FETCH of items the listing answers alone (L{_INFO_ITEMS}: UID,
        FLAGS, MODSEQ, RFC822.SIZE, INTERNALDATE), as one tight pass: each
        item's values for every message at once, each flag set formatted
        once (L{_flagsWire}), the lines joined and written in a few big
        writes.

        @param indexes: the positions (sequence number - 1) to answer.
        @param names: the items, in the order asked.
        @param changedSince: CHANGEDSINCE: only messages of a greater
            modseq, and none reported missing.
        @return: a Deferred firing with whether every message was there.
        """
        uids = view.uids
        infos: List[Optional[IMessageInfo]]
        if view.listing() is None:
            byUid = yield self._currentInfos([uids[i] for i in indexes])
            if self.view is not view:
                return True
        if view.listing() is not None:
            infos = view.infosAt(indexes)
        else:
            # Changed while listing: answer from that listing anyway.
            infos = [byUid.get(uids[i]) for i in indexes]
        complete = True
        ghosts = view.ghosts
        # (all(): no info missing, tested without an == per message.)
        if changedSince is not None or ghosts or not all(infos):
            seqs, chosen = [], []
            for i, info in zip(indexes, infos):
                if info is None or uids[i] in ghosts:
                    complete = complete and changedSince is not None
                    continue
                if changedSince is None or info.modseq > changedSince:
                    seqs.append(i + 1)
                    chosen.append(info)
        else:
            seqs, chosen = [i + 1 for i in indexes], infos  # type: ignore[assignment]
        if not chosen:
            return complete
        recent = view.recent
        template = b"* %d FETCH (" + b" ".join(_INFO_ITEMS[name] for name in names) + b")\r\n"
        # Streamed: each slice is formatted, written and sent (a turn of
        # the reactor) before the next is formatted, so the client reads
        # the first responses while the rest are made (written as one
        # block at the end, the client's reading would follow the
        # server's work instead of overlapping it).
        start, step = 0, _STREAM_FIRST
        while True:
            part = chosen[start : start + step]
            columns: List[Sequence[Any]] = [seqs[start : start + step]]
            for name in names:
                if name == "UID":
                    columns.append([info.uid for info in part])
                elif name == "FLAGS":
                    columns.append(_flagsColumn(part, recent))
                elif name == "MODSEQ":
                    columns.append([info.modseq for info in part])
                elif name == "RFC822.SIZE":
                    columns.append([info.size for info in part])
                else:
                    columns.append([formatDateTime(info.internalDate) for info in part])
            lines = [template % row for row in zip(*columns)]
            self._writeRaw(b"".join(lines))
            start += step
            if start >= len(chosen):
                return complete
            step = max(1, _STREAM_BATCH // len(lines[0]))
            yield self._sent()
            if self._closed:
                return complete

    def _fetchQuick(
        self, view: SelectedView, index: int, info: IMessageInfo, atts: List[Any], addFlags: bool,
        summary: Any = None,
    ) -> Optional[bytes]:
        """
        One message's FETCH response built without opening the message:
        for items the store's info answers and structure items found in
        the cache.  L{None} when the message must be read (a body section,
        or a structure item not cached yet).

        @param summary: the message's summary when the caller holds it,
            else it is looked up in the cache.
        """
        items = []
        recent = view.isRecent(info.uid)
        for att in atts:
            if not isinstance(att, FetchAttribute):
                return None
            name = att.name
            if name == "FLAGS":
                items.append(b"FLAGS " + _flagsWire(info.flags, recent))
            elif name == "UID":
                items.append(b"UID %d" % (info.uid,))
            elif name == "INTERNALDATE":
                items.append(b"INTERNALDATE " + formatDateTime(info.internalDate))
            elif name == "RFC822.SIZE":
                items.append(b"RFC822.SIZE %d" % (info.size,))
            elif name == "MODSEQ":
                items.append(b"MODSEQ (%d)" % (info.modseq,))
            else:
                if summary is None:
                    summary = self.cache.get(self._cacheKey(view, info.uid))
                    if summary is None:
                        return None
                if name == "ENVELOPE":
                    items.append(b"ENVELOPE " + summary.envelope)
                elif name == "BODYSTRUCTURE" and summary.bodyStructure is not None:
                    items.append(b"BODYSTRUCTURE " + summary.bodyStructure)
                elif name == "BODY" and summary.body is not None:
                    items.append(b"BODY " + summary.body)
                else:
                    return None
        if addFlags:
            items.append(b"FLAGS " + _flagsWire(info.flags, recent))
            if self.qresync and not any(isinstance(a, FetchAttribute) and a.name == "UID" for a in atts):
                # RFC 7162 3.2: flag changes carry the UID with QRESYNC.
                items.append(b"UID %d" % (info.uid,))
            if self.condstore and not any(isinstance(a, FetchAttribute) and a.name == "MODSEQ" for a in atts):
                items.append(b"MODSEQ (%d)" % (info.modseq,))
        return b"* %d FETCH (%s)\r\n" % (index + 1, b" ".join(items))

    @defer.inlineCallbacks
    def _fetchOne(
        self, view: SelectedView, index: int, info: IMessageInfo, atts: List[Any], addFlags: bool
    ) -> Any:
        """
        Send one message's FETCH response.  Returns False if the message
        turned out to be gone.
        """
        structural = any(isinstance(a, FetchAttribute) and a.name in ("ENVELOPE", "BODYSTRUCTURE", "BODY") for a in atts)
        needsStructure = any(isinstance(a, FetchAttribute) and a.name in ("BODYSTRUCTURE", "BODY") for a in atts)
        key = self._cacheKey(view, info.uid)
        summaryHolder = [self.cache.get(key) if structural else None]
        if needsStructure and summaryHolder[0] is not None and summaryHolder[0].bodyStructure is None:
            summaryHolder[0] = None  # from the header only: parse the message
        needsFile = any(isinstance(a, BodySection) for a in atts) or (structural and summaryHolder[0] is None)
        source: Optional[IO[bytes]] = None
        if needsFile:
            try:
                source = yield view.mailbox.openMessage(info.uid)
            except NoSuchMessage:
                return False
        try:
            # The store's file may not be seekable: it is read once, from
            # the start, either whole into memory or streamed for the one
            # whole-body item of a large message.
            wholeBody = [a for a in atts if isinstance(a, BodySection) and a.part == () and a.kind == ""]
            needsParse = any(
                (isinstance(a, BodySection) and not (a.part == () and a.kind == ""))
                or (isinstance(a, FetchAttribute) and a.name in ("ENVELOPE", "BODYSTRUCTURE", "BODY"))
                for a in atts
            )
            streamIt = len(wholeBody) == 1 and not needsParse and info.size > STREAM_THRESHOLD
            parsedHolder: List[Any] = []
            dataHolder: List[bytes] = []

            def data() -> bytes:
                if not dataHolder:
                    assert source is not None
                    dataHolder.append(source.read())
                return dataHolder[0]

            def parsed() -> Any:
                if not parsedHolder:
                    from mailplat.imap.structure import parseMessage

                    parsedHolder.append(parseMessage(data()))
                return parsedHolder[0]

            def summary() -> Any:
                if summaryHolder[0] is None:
                    summaryHolder[0] = self.cache.remember(key, parsed())
                return summaryHolder[0]

            items: List[Union[bytes, Tuple[bytes, int, int]]] = []
            recent = view.isRecent(info.uid)
            for att in atts:
                if isinstance(att, FetchAttribute):
                    name = att.name
                    if name == "FLAGS":
                        items.append(b"FLAGS " + _flagsWire(info.flags, recent))
                    elif name == "UID":
                        items.append(b"UID %d" % (info.uid,))
                    elif name == "INTERNALDATE":
                        items.append(b"INTERNALDATE " + formatDateTime(info.internalDate))
                    elif name == "RFC822.SIZE":
                        items.append(b"RFC822.SIZE %d" % (info.size,))
                    elif name == "MODSEQ":
                        items.append(b"MODSEQ (%d)" % (info.modseq,))
                    elif name == "ENVELOPE":
                        items.append(b"ENVELOPE " + summary().envelope)
                    elif name == "BODYSTRUCTURE":
                        items.append(b"BODYSTRUCTURE " + summary().bodyStructure)
                    elif name == "BODY":
                        items.append(b"BODY " + summary().body)
                else:
                    if streamIt:
                        start, length = 0, info.size
                        if att.partial is not None:
                            start = min(att.partial[0], info.size)
                            length = min(att.partial[1], info.size - start)
                        items.append((att.responseName, start, length))
                        continue
                    if att.part == () and att.kind == "":
                        body = data()
                    else:
                        body = parsed().section(att.part, att.kind, att.fields)
                    if att.partial is not None:
                        body = body[att.partial[0]: att.partial[0] + att.partial[1]]
                    items.append(att.responseName + b" " + literal(body))
            if addFlags:
                items.append(b"FLAGS " + _flagsWire(info.flags, recent))
                if self.qresync and not any(isinstance(a, FetchAttribute) and a.name == "UID" for a in atts):
                    items.append(b"UID %d" % (info.uid,))
                if self.condstore and not any(isinstance(a, FetchAttribute) and a.name == "MODSEQ" for a in atts):
                    items.append(b"MODSEQ (%d)" % (info.modseq,))
            line = b"* %d FETCH (" % (index + 1,)
            pending = [line]
            for n, item in enumerate(items):
                if n:
                    pending.append(b" ")
                if isinstance(item, tuple):
                    itemName, start, length = item
                    pending.append(itemName + b" {%d}\r\n" % (length,))
                    self._writeRaw(b"".join(pending))
                    pending = []
                    assert source is not None
                    _skip(source, start)
                    sender = _FileSender(source, length, self.transport)
                    self._producer = sender
                    try:
                        yield sender.start()
                    finally:
                        self._producer = None
                else:
                    pending.append(item)
            pending.append(b")\r\n")
            self._writeRaw(b"".join(pending))
            return True
        finally:
            if source is not None:
                source.close()

    @defer.inlineCallbacks
    def _matching(self, view: SelectedView, query: Any) -> Any:
        """
        The messages of C{view} that match a parsed search program, as
        C{(index, uid, info)} in sequence order; L{None} if the view was
        closed meanwhile.
        """
        from mailplat.imap.search import SearchContext
        from mailplat.imap.structure import parseMessage

        infos = yield self._currentInfos(None)
        if self.view is not view:
            return None
        maxSeq = len(view.uids)
        maxUid = view.uids[-1] if maxSeq else 0
        # TEXT/BODY answered from the full-text index when there is one;
        # ``scan`` are the messages it cannot answer for.
        texts: Optional[Dict[Any, Any]] = None
        scan: Set[int] = set()
        needsMessage, needsText = query.needsMessage, query.needsText
        if self.cache.index is not None and query.needsText and query.textKeys():
            found = yield self._indexedTexts(view, infos, query)
            if self.view is not view:
                return None
            if found is not None:
                texts, scan = found
                needsMessage, needsText = query.needsGiven(texts)
        # Header keys match in the cache's columns of decoded values,
        # filled first for the messages they lack (reading only headers).
        columns: Dict[str, Dict[int, Any]] = {}
        gone: Set[int] = set()
        if needsMessage and not needsText:
            ghosts = view.ghosts
            present = [u for u in view.uids if u in infos and u not in ghosts and u not in scan]
            found = yield self._headerColumns(view, present, query.headerFields())
            if found is None or self.view is not view:
                return None
            columns, gone = found
        matched = []
        uids, ghosts, recent = view.uids, view.ghosts, view.recent
        # One context for the messages matched without reading them (it
        # keeps nothing of its own between messages).
        light = SearchContext(0, 0, None, False, maxSeq, maxUid, _needMessage, texts=texts,  # type: ignore[arg-type]
                              columns=columns)
        for index in range(len(uids)):
            u = uids[index]
            info = infos.get(u)
            if info is None or u in ghosts or u in gone:
                continue
            answered = texts if u not in scan else None
            if u not in scan and not needsText:
                light.seq, light.uid, light.info, light.recent = index + 1, u, info, u in recent
                try:
                    if query.matches(light):
                        matched.append((index, u, info))
                    continue
                except _NeedMessage:
                    pass
            if answered is not None:
                mustRead, headersOnly = needsMessage, needsMessage and not needsText
            else:
                mustRead, headersOnly = query.needsMessage, query.needsMessage and not query.needsText
            loader = None
            if mustRead:
                try:
                    source = yield view.mailbox.openMessage(u)
                except NoSuchMessage:
                    continue
                try:
                    content = source.read()
                finally:
                    source.close()

                def loader(content: bytes = content, key: Any = self._cacheKey(view, u), fill: bool = headersOnly) -> Any:
                    parsed = parseMessage(content)
                    if fill or self.cache.index is not None:
                        # Fill the cache (and index) so the next search is warm.
                        self.cache.remember(key, parsed)
                    return parsed

            ctx = SearchContext(
                seq=index + 1, uid=u, info=info, recent=view.isRecent(u),
                maxSeq=maxSeq, maxUid=maxUid, message=loader, texts=answered,
            )
            if query.matches(ctx):
                matched.append((index, u, info))
            if self.view is not view:
                return None
        return matched

    @defer.inlineCallbacks
    def _headerColumns(self, view: SelectedView, uids: List[int], names: List[str]) -> Any:
        """
        The cache's columns of the header fields C{names} (see
        L{MessageCache.column}), filled for C{uids}: from the summaries
        (in memory or in the message index), else from kept header blocks,
        else by reading each message's header only (L{_readHeaders}) and
        keeping it (L{MessageCache.keepHeader}); L{HEADER_BATCH} messages
        are read per turn of the reactor, so a big mailbox does not stall
        the other sessions.  Nothing is parsed whole and nothing goes to
        the message index: a header search costs a header read per
        message the first time, a dictionary lookup afterwards.

        Each header block scanned fills, in the same scan, the columns of
        L{COLUMN_FIELDS<mailplat.imap.cache.COLUMN_FIELDS>} too, with the
        fields' octets, decoded when a search first looks at them (a later
        search on another of those fields scans nothing); equal values
        are kept once.

        @return: a Deferred firing with C{(columns by name, UIDs found
            gone)}, or L{None} when the view was closed meanwhile.
        """
        from mailplat.imap.cache import COLUMN_FIELDS, HeaderSummary
        from mailplat.imap.search import Undecoded, foldValues
        from mailplat.mailbox import bulkObjects
        from mailplat.imap.structure import fieldText, headerFieldOctets

        prefix = self._cacheKey(view, 0)[:3]
        cache = self.cache
        columns = {name: cache.column(prefix, name) for name in names}
        missing: Set[int] = set()
        for column in columns.values():
            missing.update(itertools.filterfalse(column.__contains__, uids))
        lacking = sorted(missing)
        gone: Set[int] = set()
        if not lacking:
            return columns, gone
        filled = dict(columns)
        for name in COLUMN_FIELDS:
            if name not in filled:
                filled[name] = cache.column(prefix, name)
        fillNames = frozenset(filled)
        fillItems = [(name, column, name in columns) for name, column in filled.items()]
        shared: Dict[Any, Any] = {}

        def fill(u: int, header: bytes) -> None:
            # Every column of ``filled`` from one scan of the header: the
            # asked ones decoded and folded, the others as the octets
            # after the colon (a few cheap operations a field), decoded
            # when a search first looks at them.
            found = headerFieldOctets(header, fillNames)
            for name, column, asked in fillItems:
                raws = found.get(name)
                if raws is None:
                    column[u] = ()
                elif asked:
                    folded = foldValues([fieldText(raw) for raw in raws])
                    column[u] = shared.setdefault(folded, folded)
                elif len(raws) == 1:
                    # (The usual single field as its octets: bytes are no
                    # work for the garbage collector, a tuple is.)
                    column[u] = raws[0]
                else:
                    column[u] = Undecoded(raws)

        yield self._loadSummaries(view, lacking)
        if self.view is not view:
            return None
        unread = []
        for u in lacking:
            key = prefix + (u,)
            summary = cache.peek(key)
            header = summary.header if summary.__class__ is HeaderSummary else None
            if summary is not None and header is None:
                # A whole summary keeps the search fields (every field of
                # a small header): the header is read only for an asked
                # field it lacks.
                readIt = False
                for name, column in columns.items():
                    if u not in column:
                        values = summary.headerValues(name)
                        if values is None:
                            readIt = True
                            break
                        column[u] = foldValues(values)
                if not readIt:
                    continue
            if header is None:
                header = cache.header(key)
                if header is None:
                    unread.append(u)
                    continue
            fill(u, header)
        def fillBatch(batch: List[int], headers: Dict[int, Optional[bytes]]) -> None:
            # (Some ten objects a message, none in a cycle.)
            with bulkObjects():
                for u in batch:
                    header = headers.get(u)
                    if header is None:
                        gone.add(u)
                        continue
                    cache.keepHeader(prefix + (u,), header)
                    fill(u, header)

        if not (yield self._inHeaderBatches(view, unread, fillBatch)):
            return None
        return columns, gone

    @defer.inlineCallbacks
    def _inHeaderBatches(self, view: SelectedView, uids: List[int],
                         each: Callable[[List[int], Dict[int, Optional[bytes]]], None]) -> Any:
        """
        Read the headers of C{uids} (L{_readHeaders}), L{HEADER_BATCH}
        messages per turn of the reactor so a big mailbox does not stall
        the other sessions, and give each batch and its headers to C{each}.

        @return: a Deferred firing with L{True}, or L{False} when the view
            was closed meanwhile (the rest is not read).
        """
        for start in range(0, len(uids), HEADER_BATCH):
            if start:
                yield self._pause()
                if self.view is not view:
                    return False
            batch = uids[start : start + HEADER_BATCH]
            headers = yield self._readHeaders(view.mailbox, batch)
            if self.view is not view:
                return False
            each(batch, headers)
        return True

    @defer.inlineCallbacks
    def _headerSummaries(self, view: SelectedView, uids: List[int]) -> Any:
        """
        Give each of C{uids} without a summary in the cache one made from
        its header alone (L{HeaderSummary}, which works out only what is
        asked of it): from the header block a header SEARCH kept, else read
        (L{HEADER_BATCH} messages per turn of the reactor).

        @return: a Deferred firing with the summary of each of C{uids}
            still there, by UID (held here, so none is lost to the cache's
            bound on a mailbox bigger than the cache).
        """
        from mailplat.imap.cache import HeaderSummary

        prefix = self._cacheKey(view, 0)[:3]
        cache = self.cache
        found = {}
        unread = []
        for u in uids:
            key = prefix + (u,)
            summary = cache.get(key)
            if summary is None:
                header = cache.header(key)
                if header is None:
                    unread.append(u)
                    continue
                summary = HeaderSummary(header)
                cache.put(key, summary)
            found[u] = summary
        def summarized(batch: List[int], headers: Dict[int, Optional[bytes]]) -> None:
            for u in batch:
                header = headers.get(u)
                if header is not None:
                    found[u] = summary = HeaderSummary(header)
                    cache.put(prefix + (u,), summary)

        yield self._inHeaderBatches(view, unread, summarized)
        return found

    def _pause(self) -> defer.Deferred:
        """
        A Deferred firing at the next turn of the reactor (or of the
        session's clock), so long work lets other sessions in between.
        """
        pause: defer.Deferred = defer.Deferred()
        self.clock.callLater(0, pause.callback, None)
        return pause

    def _sent(self) -> defer.Deferred:
        """
        A Deferred firing once the reactor has had a turn to send what was
        written (its timed calls run before it polls for I/O, so a call
        made at once would come before the write: this one is made from
        a timed call, after the poll), for a long response to reach the
        client in pieces while the rest is made.
        """
        sent: defer.Deferred = defer.Deferred()
        self.clock.callLater(0, self.clock.callLater, 0, sent.callback, None)
        return sent

    @defer.inlineCallbacks
    def _readHeaders(self, mailbox: IMailbox, uids: List[int]) -> Any:
        """
        The header blocks of the messages C{uids} (see L{_headerOf}): a
        message of at most L{HEADER_READ} octets read whole through the
        store's L{IMessageReader} when it has one, the others opened, all
        asked of the store at once (a store that answers at once is not
        waited for one message at a time).

        @return: a Deferred firing with the header of each UID, L{None}
            for a message gone.
        """
        from mailplat.imap.structure import headerEnd

        found: Dict[int, Optional[bytes]] = {}
        failures: List[Failure] = []
        waiting = []
        reader = IMessageReader(mailbox, None)
        for u in uids:
            if reader is not None:
                # A small message read whole at once, without a Deferred
                # or a file object (a store reading local files can).
                try:
                    data = reader.readMessage(u, HEADER_READ)
                except NoSuchMessage:
                    found[u] = None
                    continue
                if data is not None:
                    found[u] = data[: headerEnd(data, True)]
                    continue
            d = mailbox.openMessage(u)
            d.addCallbacks(_headerOf, _noMessage)
            d.addCallbacks(functools.partial(found.__setitem__, u), failures.append)
            if not d.called:
                waiting.append(d)
        if waiting:
            yield defer.DeferredList(waiting)
        if failures:
            failures[0].raiseException()
        return found

    @defer.inlineCallbacks
    def _indexedTexts(self, view: SelectedView, infos: Dict[int, IMessageInfo], query: Any) -> Any:
        """
        The answers of the full-text index to the TEXT/BODY keys of
        C{query} (see L{mailplat.imap.index.indexedTexts}), after indexing
        the messages of C{view} it lacks.
        """
        from mailplat.imap.index import indexedTexts

        @defer.inlineCallbacks
        def read(uid: int) -> Any:
            try:
                source = yield view.mailbox.openMessage(uid)
            except NoSuchMessage:
                return None
            try:
                return source.read()
            finally:
                source.close()

        uids = [u for u in view.uids if u in infos and u not in view.ghosts]
        prefix = self._cacheKey(view, 0)[:3]
        try:
            return (yield indexedTexts(self.cache, prefix, uids, query.textKeys(), read))
        except Exception:
            log.failure("the message index could not answer a search; reading the messages")
            return None

    def _loadSummaries(self, view: SelectedView, uids: Iterable[int]) -> Any:
        """
        Bring the summaries of C{uids} back from the message index into
        the cache (when there is an index).
        """
        prefix = self._cacheKey(view, 0)[:3]
        if self.cache.index is None or not self.cache.index.mayHold(prefix[0]):
            return defer.succeed(None)
        return self.cache.load([prefix + (u,) for u in uids])

    def _parseProgram(self, args: Arguments, charset: str) -> Any:
        """
        The search program of SEARCH, SORT or THREAD, parsed.
        """
        from mailplat.imap.search import BadCharset, SearchSyntaxError, parseSearch

        try:
            query = parseSearch(args.rest(), charset)
        except SearchSyntaxError as e:
            raise _bad(f"Invalid search: {e}")
        except BadCharset:
            raise IMAPError("Unsupported charset", b"BADCHARSET (UTF-8 US-ASCII)")
        if query.usesModseq:
            self._enableCondstore()
        return query

    def _cacheKey(self, view: SelectedView, uid: int) -> Tuple[str, str, int, int]:
        # The account/mailbox/UIDVALIDITY part is worked out once per view
        # (finding a shared mailbox's owner is not free), again only if
        # the mailbox was renamed.
        prefix = view.cachePrefix
        mailbox = view.mailbox
        if prefix is None or prefix[1] != mailbox.name or prefix[2] != mailbox.uidValidity:
            prefix = view.cachePrefix = self._mailboxKey(mailbox, 0)[:3]
        return prefix + (uid,)

    def _mailboxKey(self, mailbox: IMailbox, uid: int) -> Tuple[str, str, int, int]:
        account = self.account
        if account is None:
            return ("", mailbox.name, mailbox.uidValidity, uid)
        # A shared mailbox's messages are its owner's: one key for all.
        return (self._namespaces().ownerOf(mailbox), mailbox.name, mailbox.uidValidity, uid)

    def _remember(self, mailbox: IMailbox, uid: int, content: bytes) -> None:
        """
        Parse a message this session just APPENDed (while its octets are
        in memory) and keep its summary, so FETCH ENVELOPE and header
        SEARCH never read it back (DESIGN.md, "Parse once").
        """
        from mailplat.imap.structure import parseMessage

        try:
            self.cache.remember(self._mailboxKey(mailbox, uid), parseMessage(content))
        except Exception:
            log.failure("IMAP could not parse an appended message")

    @defer.inlineCallbacks
    def _summaries(self, view: SelectedView, uids: Iterable[int]) -> Any:
        """
        The L{MessageSummary} of each of C{uids} still there, by UID, from
        the cache or made from the message's header once (see
        L{_headerSummaries}).
        """
        uids = list(uids)
        yield self._loadSummaries(view, uids)
        if self.view is not view:
            return {}
        from mailplat.imap.cache import HeaderSummary

        found = yield self._headerSummaries(view, uids)
        # SORT and THREAD ask for the sort keys many times: the whole
        # summary of the header, not the lazy one.
        return {u: s.full() if isinstance(s, HeaderSummary) else s for u, s in found.items()}

    def do_SORT(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._sort(args, uid=False)

    @defer.inlineCallbacks
    def _sort(self, args: Arguments, uid: bool) -> Any:
        """
        SORT and UID SORT (RFC 5256).
        """
        from mailplat.imap.thread import SORT_KEYS, Item, sortItems

        tokens = args.parenList("sort criteria")
        criteria: List[Tuple[str, bool]] = []
        reverse = False
        for token in tokens:
            name = bytes(token).upper().decode("ascii", "replace") if isinstance(token, Atom) else ""
            if name == "REVERSE" and not reverse:
                reverse = True
                continue
            if name not in SORT_KEYS:
                raise _bad("Invalid sort criterion")
            criteria.append((name, reverse))
            reverse = False
        if not criteria or reverse:
            raise _bad("Invalid sort criteria")
        charset = args.astring("charset").decode("ascii", "replace")
        query = self._parseProgram(args, charset)
        view = self.view
        assert view is not None
        matched = yield self._matching(view, query)
        if matched is None:
            return b"SORT completed"
        summaries = yield self._summaries(view, [u for _, u, _ in matched])
        items = [
            Item(u if uid else index + 1, index + 1, info.internalDate, info.size, summaries[u])
            for index, u, info in matched if u in summaries
        ]
        ordered = sortItems(items, criteria)
        self._write(b"* SORT" + b"".join(b" %d" % i.number for i in ordered))
        return b"SORT completed"

    def do_THREAD(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._thread(args, uid=False)

    @defer.inlineCallbacks
    def _thread(self, args: Arguments, uid: bool) -> Any:
        """
        THREAD and UID THREAD (RFC 5256): ORDEREDSUBJECT and REFERENCES.
        """
        from mailplat.imap.thread import Item, formatThreads, threadOrderedSubject, threadReferences

        algorithm = args.atom("threading algorithm").upper()
        if algorithm not in (b"ORDEREDSUBJECT", b"REFERENCES"):
            raise _bad("Unsupported threading algorithm")
        charset = args.astring("charset").decode("ascii", "replace")
        query = self._parseProgram(args, charset)
        view = self.view
        assert view is not None
        matched = yield self._matching(view, query)
        if matched is None:
            return b"THREAD completed"
        summaries = yield self._summaries(view, [u for _, u, _ in matched])
        items = [
            Item(u if uid else index + 1, index + 1, info.internalDate, info.size, summaries[u])
            for index, u, info in matched if u in summaries
        ]
        roots = threadOrderedSubject(items) if algorithm == b"ORDEREDSUBJECT" else threadReferences(items)
        threads = formatThreads(roots)
        self._write(b"* THREAD" + (b" " + threads if threads else b""))
        return b"THREAD completed"

    def do_SEARCH(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._search(tag, args, uid=False)

    @defer.inlineCallbacks
    def _search(self, tag: bytes, args: Arguments, uid: bool) -> Any:
        returns: Optional[List[bytes]] = None
        first = args.peek()
        if isinstance(first, Atom) and bytes(first).upper() == b"RETURN":
            args.atom()
            returns = []
            for token in args.parenList("search return options"):
                option = bytes(token).upper() if isinstance(token, Atom) else b""
                if option not in (b"MIN", b"MAX", b"COUNT", b"ALL"):
                    raise _bad("Unknown SEARCH return option")
                if option not in returns:
                    returns.append(option)
            if not returns:
                returns = [b"ALL"]
        charset = "US-ASCII"
        first = args.peek()
        if isinstance(first, Atom) and bytes(first).upper() == b"CHARSET":
            args.atom()
            charset = args.astring("charset").decode("ascii", "replace")
        query = self._parseProgram(args, charset)
        view = self.view
        assert view is not None
        matched = yield self._matching(view, query)
        if matched is None:
            return b"SEARCH completed"
        results = [u if uid else index + 1 for index, u, _ in matched]
        highest = max((info.modseq for _, _, info in matched), default=0)
        modseq = b" MODSEQ %d" % (highest,) if query.usesModseq and results else b""
        if returns is None:
            line = b"* SEARCH" + b"".join(b" %d" % n for n in results)
            if modseq:
                line += b" (" + modseq.strip() + b")"
            self._write(line)
            return b"SEARCH completed"
        line = b'* ESEARCH (TAG "' + tag + b'")' + (b" UID" if uid else b"")
        if results and b"MIN" in returns:
            line += b" MIN %d" % (results[0],)
        if results and b"MAX" in returns:
            line += b" MAX %d" % (results[-1],)
        if b"COUNT" in returns:
            line += b" COUNT %d" % (len(results),)
        if results and b"ALL" in returns:
            line += b" ALL " + _compressUIDs(results)
        self._write(line + modseq)
        return b"SEARCH completed"


class _NeedMessage(Exception):
    """
    A search key asked for more of a message than its cached summary
    holds; the message is read and the key asked again.
    """


def _needMessage() -> Any:
    raise _NeedMessage()


def _headerOf(source: IO[bytes]) -> bytes:
    """
    Read the header block of a message (its top-level fields, as
    L{headerEnd<mailplat.imap.structure.headerEnd>} delimits them) from
    the start of the open C{source}, only as far as needed, and close it.
    """
    from mailplat.imap.structure import headerEnd

    try:
        data = b""
        size = HEADER_READ
        while True:
            chunk = source.read(size)
            data += chunk
            end = headerEnd(data, not chunk)
            if end >= 0:
                return data[:end]
            size *= 2
    finally:
        source.close()


def _noMessage(failure: Failure) -> None:
    """
    A message turned out to be gone: L{None} stands for it.
    """
    failure.trap(NoSuchMessage)
    return None


def _modseqValue(token: Any) -> int:
    """
    A mod-sequence value argument (RFC 7162: 1 to 2**63-1; 0 is allowed
    where C{mod-sequence-valzer} is, as in UNCHANGEDSINCE and CHANGEDSINCE).
    """
    if not isinstance(token, Atom) or not bytes(token).isdigit() or len(token) > 19:
        raise _bad("Invalid mod-sequence value")
    value = int(bytes(token))
    if value >= 2**63:
        raise _bad("Invalid mod-sequence value")
    return value


def _qresyncParameter(token: Any) -> Tuple[int, int, Optional[SequenceSet]]:
    """
    The value of SELECT's QRESYNC parameter (RFC 7162 3.2):
    C{(uidvalidity modseq [known-uids [(known-sequence-set known-uid-set)]])},
    as C{(uidvalidity, modseq, known UIDs or None)}; the seq-match-data is
    checked for syntax and otherwise unused (see
    L{IMAPServer._vanishedEarlier}).
    """
    if not isinstance(token, list) or not 2 <= len(token) <= 4:
        raise _bad("Invalid QRESYNC parameter")
    first = token[0]
    if not isinstance(first, Atom) or not bytes(first).isdigit() or len(first) > 10:
        raise _bad("Invalid UIDVALIDITY in QRESYNC")
    uidValidity = int(bytes(first))
    if not 0 < uidValidity < 2**32:
        raise _bad("Invalid UIDVALIDITY in QRESYNC")
    modseq = _modseqValue(token[1])
    if modseq == 0:
        raise _bad("Invalid mod-sequence value")
    known: Optional[SequenceSet] = None
    rest = token[2:]
    if rest and not isinstance(rest[0], list):
        known = _uidSetValue(rest[0])
        rest = rest[1:]
    if rest:
        match = rest[0]
        if len(rest) != 1 or not isinstance(match, list) or len(match) != 2:
            raise _bad("Invalid QRESYNC sequence match data")
        for item in match:
            _uidSetValue(item)
    return uidValidity, modseq, known


def _uidSetValue(token: Any) -> SequenceSet:
    """
    A sequence-set argument inside a parenthesised list.
    """
    if not isinstance(token, Atom):
        raise _bad("Invalid sequence set")
    try:
        return parseSequenceSet(bytes(token))
    except SequenceSetError as e:
        raise _bad(f"Invalid sequence set: {e}")


def _skip(source: IO[bytes], count: int) -> None:
    """
    Read and drop C{count} octets of C{source} (which may not seek).
    """
    while count > 0:
        chunk = source.read(min(count, 65536))
        if not chunk:
            return
        count -= len(chunk)


def _patternMatcher(pattern: str) -> Callable[[str], bool]:
    """
    A test for names matching a LIST pattern (C{*} matches anything,
    C{%} anything but the delimiter); C{INBOX} matches case-insensitively.
    """
    if pattern[:5].upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in "/*%"):
        pattern = "INBOX" + pattern[5:]
    regex = "".join(
        ".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch) for ch in pattern
    )
    compiled = re.compile(regex + r"\Z", re.DOTALL)
    return lambda name: compiled.match(name) is not None


class IMAPFactory(Factory):
    """
    Builds L{IMAPServer} sessions.
    """

    protocol = IMAPServer
    #: Whether passwords are accepted without TLS from any address (set by
    #: the service from C{auth.allow_plaintext}).
    allowPlaintext = False

    def __init__(
        self,
        portal: LoginPortal,
        hostname: str,
        timeout: float = 1800.0,
        maxLineLength: int = 65536,
        maxLiteralSize: int = 64 * 1024 * 1024,
        clock: Optional[IReactorTime] = None,
        contextFactory: Any = None,
        cache: Optional[MessageCache] = None,
        quotaBytes: int = 0,
        quotaMessages: int = 0,
        index: Optional[Any] = None,
    ) -> None:
        """
        @param portal: the cred portal logins go through.
        @param hostname: this server's name.
        @param timeout: autologout after this many idle seconds.
        @param maxLineLength: longest command line accepted.
        @param maxLiteralSize: largest APPEND message accepted.
        @param clock: for autologout timers; the global reactor if L{None}.
        @param contextFactory: anything C{transport.startTLS} accepts (a
            pyOpenSSL context factory or L{twisted.internet.ssl}
            options); STARTTLS is offered only when it is set.
        @param cache: the L{MessageCache} of parsed message answers its
            sessions share; a new one of 100,000 entries if L{None}.
        @param quotaBytes: each account's storage quota in octets
            (C{[limits] quota}); 0 for none.  APPEND and COPY over it are
            refused with C{NO [OVERQUOTA]}, and QUOTA (RFC 9208) is
            advertised.
        @param quotaMessages: each account's limit on messages; 0 for none.
        @param index: the L{MessageIndex <mailplat.imap.index.MessageIndex>}
            kept behind the cache (summaries and full-text search on
            disk), or L{None} for a memory-only cache.
        """
        self.portal = portal
        self.hostname = hostname
        self.timeout = timeout
        self.maxLineLength = maxLineLength
        self.maxLiteralSize = maxLiteralSize
        self.clock = clock
        self.contextFactory = contextFactory
        self.cache = cache if cache is not None else MessageCache(index=index)
        if index is not None and self.cache.index is None:
            self.cache.index = index
        self.quotaBytes = quotaBytes
        self.quotaMessages = quotaMessages

    def buildProtocol(self, addr: Any) -> IMAPServer:
        p = IMAPServer(
            self.portal,
            self.hostname,
            timeout=self.timeout,
            maxLineLength=self.maxLineLength,
            maxLiteralSize=self.maxLiteralSize,
            clock=self.clock,
            contextFactory=self.contextFactory,
            cache=self.cache,
            quotaBytes=self.quotaBytes,
            quotaMessages=self.quotaMessages,
        )
        p.factory = self
        return p
