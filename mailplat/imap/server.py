"""
mailplat's IMAP4rev1 server (RFC 3501), with IDLE (RFC 2177), UIDPLUS
(RFC 4315), SASL-IR (RFC 4959), UNSELECT (RFC 3691) and NAMESPACE
(RFC 2342), written on C{twisted.internet} and the store contract
(L{mailplat.interfaces}).

A session is an explicit state machine (not authenticated, authenticated,
selected, logout).  Commands are handled strictly in the order received:
while one is waiting on the store, later input stays buffered in the
L{CommandFramer} (and the transport is paused if too much piles up).
"""

import base64
import binascii
import bisect
import re
from array import array
from io import BytesIO
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailplat import netutil
from mailplat.address import normalizeAddress
from mailplat.errors import (
    InvalidMailboxName,
    MailboxError,
    MailboxExists,
    NoSuchMailbox,
    NoSuchMessage,
)
from mailplat import mutf7
from mailplat.imap.parser import (
    Arguments,
    Atom,
    BodySection,
    CommandFramer,
    CommandReady,
    FetchAttribute,
    LineTooLong,
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
from mailplat.imap.sequence import SequenceSet
from mailplat.imap.wire import literal, string
from mailplat.interfaces import HIERARCHY_DELIMITER, IAccount, IMailbox, IMailboxListener, IMessageInfo
from mailplat.mailbox import validateMailboxName

__all__ = ["IMAPServer", "IMAPFactory"]

log = Logger()

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"
LOGOUT = "logout"

# Bodies longer than this are sent from the file with a pull producer.
STREAM_THRESHOLD = 256 * 1024
# Literals of APPEND longer than this are collected in a temporary file.
SPOOL_THRESHOLD = 64 * 1024
# Failed logins before the connection is closed.
MAX_AUTH_FAILURES = 5

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


def _flagsWire(flags: Iterable[str], recent: bool = False) -> bytes:
    ordered = sorted(flags, key=lambda f: (not f.startswith("\\"), f.lower()))
    if recent:
        ordered.append("\\Recent")
    return b"(" + " ".join(ordered).encode("utf-8", "replace") + b")"


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
    """

    def __init__(self, mailbox: IMailbox, readOnly: bool, infos: List[IMessageInfo], recent: Set[int]) -> None:
        self.mailbox = mailbox
        self.readOnly = readOnly
        self.uids = array("I", (i.uid for i in infos))
        self.modseqs = array("Q", (i.modseq for i in infos))
        self.recent = recent
        self.ghosts: Set[int] = set()
        self.dirty = False

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
        How many messages of the view are \\Recent.
        """
        return sum(1 for uid in self.recent if self.indexOf(uid) >= 0)


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
    b"IDLE": (_AUTH, "do_IDLE", True),
    b"CHECK": (_SEL, "do_CHECK", True),
    b"CLOSE": (_SEL, "do_CLOSE", True),
    b"UNSELECT": (_SEL, "do_UNSELECT", True),
    b"EXPUNGE": (_SEL, "do_EXPUNGE", True),
    b"SEARCH": (_SEL, "do_SEARCH", False),
    b"FETCH": (_SEL, "do_FETCH", False),
    b"STORE": (_SEL, "do_STORE", False),
    b"COPY": (_SEL, "do_COPY", True),
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

    def __init__(
        self,
        portal: Portal,
        hostname: str,
        timeout: float = 1800.0,
        maxLineLength: int = 65536,
        maxLiteralSize: int = 64 * 1024 * 1024,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        """
        @param portal: the cred portal logins go through (for L{IAccount}).
        @param hostname: this server's name, shown in responses.
        @param timeout: autologout after this many idle seconds.
        @param maxLineLength: longest command line accepted.
        @param maxLiteralSize: largest APPEND message accepted.
        @param clock: for the autologout timer; the global reactor if
            L{None}.
        """
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[no-redef]
        self.portal = portal
        self.hostname = hostname
        self.timeout = timeout
        self.maxLineLength = maxLineLength
        self.maxLiteralSize = maxLiteralSize
        self.clock = clock
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

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        netutil.setNoDelay(self.transport)
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

    def _capabilities(self) -> bytes:
        caps = [b"IMAP4rev1", b"SASL-IR", b"IDLE", b"UIDPLUS", b"UNSELECT", b"NAMESPACE"]
        if self.state == NOT_AUTHENTICATED:
            if netutil.cleartextAllowed(self.transport):
                caps.append(b"AUTH=PLAIN")
            else:
                caps.append(b"LOGINDISABLED")
        return b" ".join(caps)

    # -- input -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state == LOGOUT:
            return
        self._resetTimeout()
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
        elif isinstance(event, LiteralAnnounced):
            self._handleLiteral(event)
        elif isinstance(event, LiteralSkipped):
            prefix = event.tag if event.tag is not None else b"*"
            self._write(prefix + b" BAD Non-synchronizing literals are not supported")

    def _handleLiteral(self, event: LiteralAnnounced) -> None:
        framer = self._framer
        tag = event.tag
        if event.nonSync:
            framer.rejectLiteral()
            return
        if tag is None:
            framer.rejectLiteral()
            self._write(b"* BAD Invalid tag")
            return
        if event.command == b"APPEND":
            if self.state not in _AUTH:
                framer.rejectLiteral()
                self._write(tag + b" BAD APPEND is not valid in this state")
                return
            if event.size > self.maxLiteralSize:
                framer.rejectLiteral()
                self._write(tag + b" NO [TOOBIG] Message too large")
                return
            toFile = event.size > SPOOL_THRESHOLD
            if not toFile and not framer.fitsInMemory(event.size):
                toFile = True
            framer.acceptLiteral(toFile=toFile)
        else:
            if event.size > self._memoryLiteral or not framer.fitsInMemory(event.size):
                framer.rejectLiteral()
                self._write(tag + b" BAD Literal too large")
                return
            framer.acceptLiteral(toFile=False)
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
            return
        if not tokens or not isinstance(tokens[0], Atom) or not isValidTag(tokens[0]):
            closeFiles()
            if tokens or first.strip():
                self._write(b"* BAD Invalid tag")
            return
        tag = bytes(tokens[0])
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            closeFiles()
            self._write(tag + b" BAD Missing command")
            return
        name = bytes(tokens[1]).upper()
        d = self._run(tag, name, Arguments(tokens[2:]))
        d.addBoth(closeFiles)
        if not d.called:
            self._busy = True
            d.addBoth(self._commandDone)

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
            if self.state not in states:
                raise _bad(f"{name.decode('ascii', 'replace')} is not valid in the {self.state} state")
            text = yield getattr(self, method)(tag, args)
            response = tag + b" OK " + text
        except IMAPError as e:
            code = b"[" + e.code + b"] " if e.code else b""
            response = tag + (b" BAD " if e.bad else b" NO ") + code + _safe(e.text)
        except ParseError as e:
            response = tag + b" BAD " + _safe(str(e))
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
            view.dirty = True
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
    def _doSync(self, allowExpunge: bool) -> Any:
        view = self.view
        if view is None or self._closed:
            return
        if not view.dirty and not (allowExpunge and view.ghosts):
            return
        view.dirty = False
        infos = yield view.mailbox.listMessages()
        if self.view is not view or self._closed:
            return
        oldCount = len(view.uids)
        uids, modseqs = view.uids, view.modseqs
        j = 0
        flagLines = []
        for i in range(oldCount):
            uid = uids[i]
            while j < len(infos) and infos[j].uid < uid:
                j += 1
            if j < len(infos) and infos[j].uid == uid:
                info = infos[j]
                if info.modseq != modseqs[i]:
                    modseqs[i] = info.modseq
                    flagLines.append(
                        b"* %d FETCH (FLAGS %s)" % (i + 1, _flagsWire(info.flags, view.isRecent(uid)))
                    )
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
            for i in range(len(uids)):
                if uids[i] in view.ghosts:
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

    # -- helpers -----------------------------------------------------------

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
            largest = view.uids[-1] if count else 0
            found = list(seqset.numbers(largest, existing=view.uids))  # type: ignore[arg-type]
            return [view.indexOf(u) for u in found]
        for low, high in seqset.ranges:
            for n in (low, high):
                if n is not None and n > count:  # type: ignore[operator]
                    raise _bad("Invalid message sequence number")
        return [n - 1 for n in seqset.numbers(count)]

    def _requireWritable(self) -> SelectedView:
        view = self.view
        assert view is not None
        if view.readOnly:
            raise IMAPError("Mailbox is read-only", b"READ-ONLY")
        return view

    @defer.inlineCallbacks
    def _currentInfos(self, uids: List[int]) -> Any:
        """
        The current L{IMessageInfo} of each of C{uids} (sorted) that still
        exists, by UID.
        """
        view = self.view
        assert view is not None
        infos = yield view.mailbox.listMessages()
        wanted = set(uids)
        return {info.uid: info for info in infos if info.uid in wanted}

    # -- any state ---------------------------------------------------------

    def do_CAPABILITY(self, tag: bytes, args: Arguments) -> bytes:
        args.end()
        self._write(b"* CAPABILITY " + self._capabilities())
        return b"CAPABILITY completed"

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

    @defer.inlineCallbacks
    def do_LOGIN(self, tag: bytes, args: Arguments) -> Any:
        user = args.astring("user name")
        password = args.astring("password")
        args.end()
        if not netutil.cleartextAllowed(self.transport):
            raise IMAPError("Login over an unencrypted connection is not allowed", b"PRIVACYREQUIRED")
        result = yield self._login(user, password)
        return result

    @defer.inlineCallbacks
    def do_AUTHENTICATE(self, tag: bytes, args: Arguments) -> Any:
        mechanism = args.atom("mechanism").upper()
        initial: Optional[bytes] = None
        if len(args):
            initial = args.atom("initial response")
        args.end()
        if mechanism != b"PLAIN":
            raise IMAPError("Unsupported authentication mechanism", b"CANNOT")
        if not netutil.cleartextAllowed(self.transport):
            raise IMAPError("Plaintext authentication over an unencrypted connection is not allowed", b"PRIVACYREQUIRED")
        if initial is None:
            self._write(b"+ ")
            line = yield self._readLine()
            if isinstance(line, LineTooLong):
                raise _bad("Authentication response too long")
            initial = line.strip()
            if initial == b"*":
                raise _bad("Authentication cancelled")
        if initial == b"=":
            initial = b""
        try:
            decoded = base64.b64decode(initial, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("Invalid base64 in authentication response")
        pieces = decoded.split(b"\x00")
        if len(pieces) != 3:
            raise _bad("Invalid PLAIN authentication response")
        authz, authc, password = pieces
        if authz and authz.lower() != authc.lower():
            try:
                same = normalizeAddress(authz.decode("utf-8")) == normalizeAddress(authc.decode("utf-8"))
            except UnicodeDecodeError:
                same = False
            if not same:
                raise IMAPError("Logging in as another user is not allowed", b"AUTHORIZATIONFAILED")
        result = yield self._login(authc, password)
        return result

    @defer.inlineCallbacks
    def _login(self, user: bytes, password: bytes) -> Any:
        try:
            name = normalizeAddress(user.decode("utf-8"))
        except UnicodeDecodeError:
            name = None
        account = None
        if name:
            try:
                iface, account, logout = yield self.portal.login(
                    UsernamePassword(name.encode("utf-8"), password), None, IAccount
                )
            except LoginFailed:
                account = None
            except Exception:
                log.failure("IMAP login of {name} failed", name=name)
                raise IMAPError("Login is unavailable now; try again later", b"UNAVAILABLE")
        if account is None:
            self._authFailures += 1
            if self._authFailures >= MAX_AUTH_FAILURES:
                self._write(b"* BYE Too many failed logins")
                self.state = LOGOUT
            raise IMAPError("Authentication failed.", b"AUTHENTICATIONFAILED")
        if self._closed:
            logout()
            return b"Logged in"
        self.account = account
        self._logout = logout
        self.state = AUTHENTICATED
        return b"[CAPABILITY " + self._capabilities() + b"] Logged in"

    # -- authenticated -----------------------------------------------------

    def do_SELECT(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._select(args, readOnly=False)

    def do_EXAMINE(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._select(args, readOnly=True)

    @defer.inlineCallbacks
    def _select(self, args: Arguments, readOnly: bool) -> Any:
        name = self._mailboxName(args)
        args.end()
        self._deselect()
        account = self.account
        assert account is not None
        mailbox = yield account.getMailbox(name)
        if self._closed:
            return b""
        view = SelectedView(mailbox, readOnly, [], set())
        self.view = view
        mailbox.addListener(self)
        try:
            infos = yield mailbox.listMessages()
            recent: Set[int] = set()
            if not readOnly:
                recent = set((yield mailbox.claimRecent()))
            status = yield mailbox.status()
        except BaseException:
            self._deselect()
            raise
        if self.view is not view:
            return b""
        view.uids = array("I", (i.uid for i in infos))
        view.modseqs = array("Q", (i.modseq for i in infos))
        view.recent = recent
        self.state = SELECTED
        keywords = set()
        firstUnseen = 0
        for n, info in enumerate(infos, 1):
            for flag in info.flags:
                if not flag.startswith("\\"):
                    keywords.add(flag)
            if not firstUnseen and "\\Seen" not in info.flags:
                firstUnseen = n
        flags = SYSTEM_FLAG_LIST + sorted(keywords, key=str.lower)
        self._write(b"* FLAGS (" + " ".join(flags).encode("utf-8", "replace") + b")")
        self._write(b"* %d EXISTS" % (len(infos),))
        self._write(b"* %d RECENT" % (view.recentCount() if not readOnly else status.recent,))
        if firstUnseen:
            self._write(b"* OK [UNSEEN %d] First unseen message" % (firstUnseen,))
        if readOnly:
            self._write(b"* OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            self._write(b"* OK [PERMANENTFLAGS " + PERMANENT_FLAGS + b"] Flags permitted")
        self._write(b"* OK [UIDVALIDITY %d] UIDs valid" % (mailbox.uidValidity,))
        uidNext = status.uidNext
        if infos and infos[-1].uid >= uidNext:
            uidNext = infos[-1].uid + 1
        self._write(b"* OK [UIDNEXT %d] Predicted next UID" % (uidNext,))
        if readOnly:
            return b"[READ-ONLY] EXAMINE completed"
        return b"[READ-WRITE] SELECT completed"

    @defer.inlineCallbacks
    def do_CREATE(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args, create=True)
        args.end()
        yield self.account.createMailbox(name)  # type: ignore[union-attr]
        return b"CREATE completed"

    @defer.inlineCallbacks
    def do_DELETE(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args)
        args.end()
        if name == "INBOX":
            raise IMAPError("INBOX cannot be deleted", b"CANNOT")
        yield self.account.deleteMailbox(name)  # type: ignore[union-attr]
        return b"DELETE completed"

    @defer.inlineCallbacks
    def do_RENAME(self, tag: bytes, args: Arguments) -> Any:
        old = self._mailboxName(args)
        new = self._mailboxName(args, create=True)
        args.end()
        if new == "INBOX":
            raise IMAPError("Cannot rename a mailbox to INBOX", b"ALREADYEXISTS")
        yield self.account.renameMailbox(old, new)  # type: ignore[union-attr]
        return b"RENAME completed"

    @defer.inlineCallbacks
    def do_SUBSCRIBE(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args)
        args.end()
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

    @defer.inlineCallbacks
    def do_LIST(self, tag: bytes, args: Arguments) -> Any:
        reference, pattern = self._listArgs(args)
        if not pattern:
            root = reference.split(HIERARCHY_DELIMITER, 1)[0] + HIERARCHY_DELIMITER if HIERARCHY_DELIMITER in reference else ""
            self._write(b'* LIST (\\Noselect) "/" ' + _mailboxWire(root))
            return b"LIST completed"
        matcher = _patternMatcher(reference + pattern)
        entries = yield self.account.listMailboxes()  # type: ignore[union-attr]
        for entry in entries:
            if matcher(entry.name):
                attrs = sorted(entry.attributes, key=str.lower)
                self._write(
                    b"* LIST (" + " ".join(attrs).encode("ascii", "replace") + b') "/" ' + _mailboxWire(entry.name)
                )
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
        self._write(b'* NAMESPACE (("" "/")) NIL NIL')
        return b"NAMESPACE completed"

    @defer.inlineCallbacks
    def do_STATUS(self, tag: bytes, args: Arguments) -> Any:
        name = self._mailboxName(args)
        items = args.parenList("status items")
        args.end()
        wanted = []
        for item in items:
            if not isinstance(item, Atom):
                raise _bad("Invalid status item")
            upper = bytes(item).upper()
            if upper not in (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN"):
                raise _bad(f"Unknown status item {upper.decode('ascii', 'replace')}")
            wanted.append(upper)
        if not wanted:
            raise _bad("Empty status item list")
        mailbox = yield self.account.getMailbox(name)  # type: ignore[union-attr]
        status = yield mailbox.status()
        values = {
            b"MESSAGES": status.messages,
            b"RECENT": status.recent,
            b"UIDNEXT": status.uidNext,
            b"UIDVALIDITY": status.uidValidity,
            b"UNSEEN": status.unseen,
        }
        body = b" ".join(b"%s %d" % (item, values[item]) for item in wanted)
        self._write(b"* STATUS " + _mailboxWire(name) + b" (" + body + b")")
        return b"STATUS completed"

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
            mailbox = yield self.account.getMailbox(name)  # type: ignore[union-attr]
        except NoSuchMailbox:
            raise IMAPError("Mailbox does not exist", b"TRYCREATE")
        source = message.file if isinstance(message, LiteralFile) else BytesIO(message)
        source.seek(0)
        uid = yield mailbox.append(source, flags, date)
        return b"[APPENDUID %d %d] APPEND completed" % (mailbox.uidValidity, uid)

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
        if not view.readOnly:
            yield view.mailbox.expunge()
        return b"CLOSE completed"

    def do_UNSELECT(self, tag: bytes, args: Arguments) -> bytes:
        args.end()
        self._deselect()
        return b"UNSELECT completed"

    @defer.inlineCallbacks
    def do_EXPUNGE(self, tag: bytes, args: Arguments) -> Any:
        args.end()
        view = self._requireWritable()
        yield view.mailbox.expunge()
        view.dirty = True
        return b"EXPUNGE completed"

    def do_UID(self, tag: bytes, args: Arguments) -> Any:
        sub = args.atom("UID command").upper()
        if sub == b"FETCH":
            return self._fetch(args, uid=True)
        if sub == b"STORE":
            return self._store(args, uid=True)
        if sub == b"SEARCH":
            return self._search(args, uid=True)
        if sub == b"COPY":
            return self._copy(args, uid=True)
        if sub == b"EXPUNGE":
            return self._uidExpunge(args)
        raise _bad("Unknown UID command")

    @defer.inlineCallbacks
    def _uidExpunge(self, args: Arguments) -> Any:
        seqset = args.sequenceSet()
        args.end()
        view = self._requireWritable()
        uids = [view.uids[i] for i in self._resolve(seqset, uid=True)]
        if uids:
            yield view.mailbox.expunge(uids)
        view.dirty = True
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
        try:
            target = yield self.account.getMailbox(name)  # type: ignore[union-attr]
        except NoSuchMailbox:
            raise IMAPError("Mailbox does not exist", b"TRYCREATE")
        if not uids:
            return b"COPY completed"
        pairs = yield view.mailbox.copyTo(uids, target)
        if not pairs:
            return b"COPY completed"
        source = _compressUIDs([p[0] for p in pairs])
        dest = _compressUIDs([p[1] for p in pairs])
        return b"[COPYUID %d %s %s] COPY completed" % (target.uidValidity, source, dest)

    def do_STORE(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._store(args, uid=False)

    @defer.inlineCallbacks
    def _store(self, args: Arguments, uid: bool) -> Any:
        seqset = args.sequenceSet()
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
        if not uids:
            return b"STORE completed"
        updated = yield view.mailbox.setFlags(uids, flags, modes[item])
        if self.view is not view:
            return b"STORE completed"
        for info in updated:
            index = view.indexOf(info.uid)
            if index < 0:
                continue
            view.modseqs[index] = info.modseq
            if not silent:
                extra = b" UID %d" % (info.uid,) if uid else b""
                self._write(
                    b"* %d FETCH (FLAGS %s%s)" % (index + 1, _flagsWire(info.flags, view.isRecent(info.uid)), extra)
                )
        return b"STORE completed"

    def do_FETCH(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._fetch(args, uid=False)

    @defer.inlineCallbacks
    def _fetch(self, args: Arguments, uid: bool) -> Any:
        seqset = args.sequenceSet()
        atts = parseFetchAttributes(args.rest())
        if uid and not any(isinstance(a, FetchAttribute) and a.name == "UID" for a in atts):
            atts.insert(0, FetchAttribute("UID"))
        view = self.view
        assert view is not None
        indexes = self._resolve(seqset, uid)
        wanted = [(i, view.uids[i]) for i in indexes]
        infos = yield self._currentInfos([u for _, u in wanted])
        if self.view is not view:
            return b"FETCH completed"
        setSeen = not view.readOnly and any(isinstance(a, BodySection) and not a.peek for a in atts)
        flagsChanged: Set[int] = set()
        if setSeen:
            unseen = [u for _, u in wanted if u in infos and "\\Seen" not in infos[u].flags]
            if unseen:
                updated = yield view.mailbox.setFlags(unseen, ["\\Seen"], "add")
                for info in updated:
                    infos[info.uid] = info
                    flagsChanged.add(info.uid)
                    index = view.indexOf(info.uid)
                    if index >= 0:
                        view.modseqs[index] = info.modseq
        hasFlags = any(isinstance(a, FetchAttribute) and a.name == "FLAGS" for a in atts)
        missing = False
        for index, u in wanted:
            info = infos.get(u)
            if info is None or u in view.ghosts:
                missing = True
                continue
            ok = yield self._fetchOne(view, index, info, atts, addFlags=(u in flagsChanged and not hasFlags))
            if not ok:
                missing = True
            if self._closed:
                return b""
        if missing:
            raise IMAPError("Some of the requested messages no longer exist", b"EXPUNGEISSUED")
        return b"FETCH completed"

    @defer.inlineCallbacks
    def _fetchOne(
        self, view: SelectedView, index: int, info: IMessageInfo, atts: List[Any], addFlags: bool
    ) -> Any:
        """
        Send one message's FETCH response.  Returns False if the message
        turned out to be gone.
        """
        needsFile = any(
            isinstance(a, BodySection) or (isinstance(a, FetchAttribute) and a.name in ("ENVELOPE", "BODYSTRUCTURE", "BODY"))
            for a in atts
        )
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
                    elif name == "ENVELOPE":
                        items.append(b"ENVELOPE " + parsed().envelope())
                    elif name == "BODYSTRUCTURE":
                        items.append(b"BODYSTRUCTURE " + parsed().bodyStructure(True))
                    elif name == "BODY":
                        items.append(b"BODY " + parsed().bodyStructure(False))
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
            line = b"* %d FETCH (" % (index + 1,)
            pending = [line]
            for n, item in enumerate(items):
                if n:
                    pending.append(b" ")
                if isinstance(item, tuple):
                    name, start, length = item
                    pending.append(name + b" {%d}\r\n" % (length,))
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

    def do_SEARCH(self, tag: bytes, args: Arguments) -> defer.Deferred:
        return self._search(args, uid=False)

    @defer.inlineCallbacks
    def _search(self, args: Arguments, uid: bool) -> Any:
        from mailplat.imap.search import BadCharset, SearchContext, SearchSyntaxError, parseSearch
        from mailplat.imap.structure import parseMessage

        charset = "US-ASCII"
        first = args.peek()
        if isinstance(first, Atom) and bytes(first).upper() == b"CHARSET":
            args.atom()
            charset = args.astring("charset").decode("ascii", "replace")
        try:
            query = parseSearch(args.rest(), charset)
        except SearchSyntaxError as e:
            raise _bad(f"Invalid search: {e}")
        except BadCharset:
            raise IMAPError("Unsupported charset", b"BADCHARSET (UTF-8 US-ASCII)")
        view = self.view
        assert view is not None
        infos = yield view.mailbox.listMessages()
        if self.view is not view:
            return b"SEARCH completed"
        byUid = {info.uid: info for info in infos}
        maxSeq = len(view.uids)
        maxUid = view.uids[-1] if maxSeq else 0
        results = []
        for index in range(len(view.uids)):
            u = view.uids[index]
            info = byUid.get(u)
            if info is None or u in view.ghosts:
                continue
            loader = None
            if query.needsMessage:
                try:
                    source = yield view.mailbox.openMessage(u)
                except NoSuchMessage:
                    continue
                try:
                    content = source.read()
                finally:
                    source.close()

                def loader(content: bytes = content) -> Any:
                    return parseMessage(content)

            ctx = SearchContext(
                seq=index + 1, uid=u, info=info, recent=view.isRecent(u),
                maxSeq=maxSeq, maxUid=maxUid, message=loader,
            )
            if query.matches(ctx):
                results.append(u if uid else index + 1)
            if self.view is not view:
                return b"SEARCH completed"
        self._write(b"* SEARCH" + b"".join(b" %d" % n for n in results))
        return b"SEARCH completed"


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

    protocol = IMAPServer  # type: ignore[assignment]

    def __init__(
        self,
        portal: Portal,
        hostname: str,
        timeout: float = 1800.0,
        maxLineLength: int = 65536,
        maxLiteralSize: int = 64 * 1024 * 1024,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        """
        @param portal: the cred portal logins go through.
        @param hostname: this server's name.
        @param timeout: autologout after this many idle seconds.
        @param maxLineLength: longest command line accepted.
        @param maxLiteralSize: largest APPEND message accepted.
        @param clock: for autologout timers; the global reactor if L{None}.
        """
        self.portal = portal
        self.hostname = hostname
        self.timeout = timeout
        self.maxLineLength = maxLineLength
        self.maxLiteralSize = maxLiteralSize
        self.clock = clock

    def buildProtocol(self, addr: Any) -> IMAPServer:
        p = IMAPServer(
            self.portal,
            self.hostname,
            timeout=self.timeout,
            maxLineLength=self.maxLineLength,
            maxLiteralSize=self.maxLiteralSize,
            clock=self.clock,
        )
        p.factory = self
        return p
