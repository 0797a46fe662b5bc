"""
mailplat's POP3 server: RFC 1939, with RFC 2449 CAPA and response codes,
RFC 1725 LAST, RFC 5034 C{AUTH} (PLAIN, LOGIN, and CRAM-MD5 and
SCRAM-SHA-256 when a checker can verify them, run by
L{mailplat.auth.sasl}) and RFC 2595 C{STLS}.

Passwords (C{USER}/C{PASS}, C{AUTH}) are accepted only over TLS or
from loopback, unless the server allows plaintext everywhere
(C{auth.allow_plaintext}).

The maildrop is the account's INBOX seen through the store contract
(L{mailplat.interfaces.IMailbox}).  A session takes the mailbox's exclusive
lock at login, numbers the messages it saw then (1..n in UID order) for its
whole life, and changes the mailbox only on C{QUIT} (the UPDATE state, as
Dovecot does): one C{setFlags} marks what C{RETR} sent C{\\Seen}, one
C{expunge} removes what C{DELE} marked.  A session that ends without
C{QUIT} changes nothing.

A message of at most L{SMALL_MESSAGE} octets from a store that reads it
synchronously (L{mailplat.interfaces.IMessageReader}) is answered at once:
its status line, dot-stuffed text and terminator in one write.  Any other
is opened (C{openMessage}) and streamed by a L{MessageSender} in 64 KiB
chunks, so a large message is never held in memory.  The session is the
transport's streaming producer for its whole life: while the transport's
buffer is full it answers no command and pauses the message being sent.

Written on C{twisted.internet}: see DESIGN.md for why C{twisted.mail}'s
POP3 is not used.
"""

import base64
import os
import re
import secrets
from array import array
from collections import deque
from typing import Any, BinaryIO, Callable, Deque, List, Optional, Sequence, Tuple

from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from twisted.cred.error import LoginFailed
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from mailplat import netutil
from mailplat.address import normalizeAddress
from mailplat.auth import sasl
from mailplat.auth.credentials import APOPCredentials
from mailplat.auth.throttle import LoginThrottled
from mailplat.errors import MailboxLocked, NoSuchMessage
from mailplat.interfaces import IAccount, IMailbox, IMessageReader, LoginPortal

log = Logger()

#: Longest command line, CRLF included (RFC 2449 section 4: 255 octets).
MAX_LINE = 255 + 2
#: Longest client response inside a SASL exchange (base64 grows by a third,
#: and RFC 5034 does not bind continuation lines to the command limit).
MAX_SASL_LINE = 8192
#: Commands answered with an error before the connection is closed.
MAX_BAD_COMMANDS = 20
#: Complete command lines held while an earlier one is still being answered
#: before the transport is asked to stop reading.
MAX_PENDING_LINES = 64
#: Octets read from a message file at a time while sending it.
CHUNK_SIZE = 65536
#: Largest message read whole, without a Deferred, from a store offering
#: L{IMessageReader}; a longer one is streamed.
SMALL_MESSAGE = CHUNK_SIZE

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"

_PLAINTEXT_REFUSED = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections"
_AUTH_FAILED = b"-ERR [AUTH] Authentication failed."
_INTERNAL_ERROR = b"-ERR [SYS/TEMP] Internal error"


class _BadCommand(Exception):
    """
    The client's command is wrong (syntax, state, argument): answered with
    C{-ERR} and the message, and counted towards L{MAX_BAD_COMMANDS}.
    """


#: A line that starts with a dot, after the first (a compiled pattern
#: finds one in a few KiB about twice as fast as C{bytes.find}; most
#: messages have none, and are then not copied to be stuffed).
_DOT_LINE = re.compile(rb"\n\.")


def multiLineResponse(status: bytes, text: bytes) -> bytes:
    """
    A whole message as a multi-line response: the C{status} line, then
    what a L{DotStuffer} makes of C{text} given in one piece, terminator
    included.
    """
    if _DOT_LINE.search(text) is not None:
        text = text.replace(b"\n.", b"\n..")
    first = b"." if text[:1] == b"." else b""
    if text and not text.endswith(b"\r\n"):
        return b"".join((status, first, text, b"\r\n.\r\n"))
    return b"".join((status, first, text, b".\r\n"))


class DotStuffer:
    """
    Turns a message's wire form into a POP3 multi-line body (RFC 1939
    section 3): every line starting with C{"."} gets another C{"."}, and
    the text ends in CRLF before the terminating C{".\\r\\n"}.

    Chunk boundaries may fall anywhere, mid-line or mid-CRLF.
    """

    def __init__(self) -> None:
        self._atLineStart = True
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """
        Stuff one chunk of message text.
        """
        if not chunk:
            return b""
        stuffed = chunk.replace(b"\n.", b"\n..")
        if self._atLineStart and chunk[:1] == b".":
            stuffed = b"." + stuffed
        self._atLineStart = chunk[-1:] == b"\n"
        self._tail = (self._tail + chunk)[-2:]
        return stuffed

    def finish(self) -> bytes:
        """
        The octets that end the multi-line response: a CRLF if the text did
        not end with one, then the terminator.
        """
        if self._tail and self._tail != b"\r\n":
            return b"\r\n.\r\n"
        return b".\r\n"


class TopFilter:
    """
    Keeps what C{TOP n k} sends of a message: the header section, the blank
    line that ends it, and the first C{k} lines of the body.
    """

    def __init__(self, bodyLines: int) -> None:
        self._inHeaders = True
        self._remaining = bodyLines
        # The first two octets of the header line being read, enough to
        # tell an empty line ("" or "\r") from any other.
        self._lineStart = b""
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """
        The part of C{chunk} to send; sets L{done} once nothing more is.
        """
        if self.done:
            return b""
        pos = 0
        while self._inHeaders:
            end = chunk.find(b"\n", pos)
            if end < 0:
                self._lineStart = (self._lineStart + chunk[pos:pos + 2])[:2]
                return chunk
            line = (self._lineStart + chunk[pos:end])[:2]
            self._lineStart = b""
            pos = end + 1
            if line in (b"", b"\r"):
                self._inHeaders = False
        if self._remaining == 0:
            self.done = True
            return chunk[:pos]
        while self._remaining:
            end = chunk.find(b"\n", pos)
            if end < 0:
                return chunk
            pos = end + 1
            self._remaining -= 1
        self.done = True
        return chunk[:pos]


@implementer(IPushProducer)
class MessageSender:
    """
    Streams one message, already opened, to a transport as the body of a
    multi-line response after its status line C{header}, reading
    L{CHUNK_SIZE} octets at a time.  Output is written once a chunk's worth
    is ready, so a message shorter than a chunk goes out in one write with
    its status line and terminator.

    It does not register with the transport: the session is the
    transport's producer and passes C{pauseProducing}, C{resumeProducing}
    and C{stopProducing} on to the message being sent.

    @ivar deferred: fires with L{None} once the terminator is written, or
        fails if reading the message failed or the transport stopped it.
    @ivar wrote: whether any of the response was written (after which no
        other reply can take its place).
    """

    def __init__(self, transport: Any, source: BinaryIO, topLines: Optional[int] = None,
                 onProgress: Optional[Callable[[], None]] = None, header: bytes = b"") -> None:
        self._transport = transport
        self._source = source
        self._stuffer = DotStuffer()
        self._top = TopFilter(topLines) if topLines is not None else None
        self._onProgress = onProgress
        self._pending = header
        self._paused = False
        self._running = False
        self._finished = False
        self.wrote = False
        self.deferred: defer.Deferred = defer.Deferred()

    def start(self) -> defer.Deferred:
        """
        Send until paused or done.
        """
        self._produce()
        return self.deferred

    def _produce(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            while not self._paused and not self._finished:
                chunk = self._source.read(CHUNK_SIZE)
                if self._top is not None:
                    chunk = self._top.feed(chunk) if chunk else chunk
                    last = not chunk or self._top.done
                else:
                    last = not chunk
                self._pending += self._stuffer.feed(chunk)
                if last:
                    self._end(None, self._stuffer.finish())
                elif len(self._pending) >= CHUNK_SIZE:
                    self._write()
                if self._onProgress is not None:
                    self._onProgress()
        except Exception:
            self._end(Failure())
        finally:
            self._running = False

    def _write(self, end: bytes = b"") -> None:
        data, self._pending = self._pending + end, b""
        if data:
            self.wrote = True
            self._transport.write(data)

    def _end(self, failure: Optional[Failure], end: bytes = b"") -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._source.close()
        except Exception:
            log.failure("closing a message file failed")
        if failure is None:
            self._write(end)
            self.deferred.callback(None)
        else:
            self._pending = b""
            self.deferred.errback(failure)

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: stop reading the message.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The transport drained: send more.
        """
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        """
        The connection is gone: close the message and give up.
        """
        if self._finished:
            return
        self._finished = True
        try:
            self._source.close()
        except Exception:
            log.failure("closing a message file failed")
        self.deferred.errback(Failure(ConnectionAbortedWhileSending()))


class ConnectionAbortedWhileSending(Exception):
    """
    The transport stopped a L{MessageSender} before the message was sent.
    """


@implementer(IPushProducer)
class POP3Server(Protocol):
    """
    One POP3 session.

    Command lines are split as they arrive and answered strictly in order;
    while an answer waits on the store or the portal, or the transport's
    buffer is full (the session is its streaming producer), later lines
    wait in a queue (PIPELINING), and past L{MAX_PENDING_LINES} the
    transport stops reading.  An unterminated line never grows past
    L{MAX_LINE}.

    @ivar state: L{AUTHORIZATION}, L{TRANSACTION} or L{UPDATE}.
    @ivar contextFactory: the TLS context source for C{STLS}, or L{None}.
    @ivar allowPlaintext: accept passwords without TLS from anywhere.
    @ivar tls: whether the session is encrypted (implicit TLS or STLS).
    """

    transport: netutil.IConnectionTransport

    def __init__(self, portal: LoginPortal, hostname: str, timeout: float = 600.0,
                 clock: Optional[IReactorTime] = None, contextFactory: Optional[Any] = None,
                 allowPlaintext: bool = False) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.contextFactory = contextFactory
        self.allowPlaintext = allowPlaintext
        self.tls = False
        self.portal = portal
        self.hostname = hostname
        self.timeout = timeout
        self.clock = clock
        self.state = AUTHORIZATION
        self._challenge: Optional[bytes] = None
        self._buffer = b""
        self._discarding = False
        self._lines: Deque[Optional[bytes]] = deque()
        self._busy = False
        self._processing = False
        self._readPaused = False
        # The transport's buffer is full: answer nothing until it drains.
        # (Reading goes on: a TLS layer pauses its producer until its
        # handshake is done, which needs reads.)
        self._writePaused = False
        self._producing = False
        self._closing = False
        self._lost = False
        self._badCommands = 0
        self._timeoutCall: Optional[IDelayedCall] = None
        self._lastActive = 0.0
        self._user: Optional[str] = None
        # What to do with the next line when it is a SASL response.
        self._sasl: Optional[Callable[[bytes], Optional[defer.Deferred]]] = None
        # SCRAM: a login waiting for the client's empty final response.
        self._pendingLogin: Optional[Tuple[Any, Callable[[], None]]] = None
        self._sender: Optional[MessageSender] = None
        # Session state once logged in.
        self._account: Optional[IAccount] = None
        self._logout: Optional[Callable[[], None]] = None
        self._mailbox: Optional[IMailbox] = None
        self._reader: Optional[IMessageReader] = None
        self._release: Optional[Callable[[], None]] = None
        self._uids = array("Q")
        self._sizes = array("Q")
        self._deleted = bytearray()
        # 1 for a message \Seen at login: QUIT need not flag it.
        self._seen = bytearray()
        # 1 for a message RETR sent since the login (or RSET): QUIT flags it.
        self._retrieved = bytearray()
        self._uidValidity = 0
        self._highest = 0

    # Connection life

    def connectionMade(self) -> None:
        """
        Set TCP_NODELAY, become the transport's producer, start the idle
        timer and greet, with an APOP timestamp when a checker can verify
        APOP.
        """
        netutil.setNoDelay(self.transport)
        self.transport.registerProducer(self, True)
        self._producing = True
        self.tls = netutil.isEncrypted(self.transport)
        self._resetTimeout()
        greeting = b"+OK mailplat ready."
        if IUsernameHashedPassword in self.portal.listCredentialsInterfaces():
            self._challenge = b"<%d.%d.%s@%s>" % (
                os.getpid(),
                int(self.clock.seconds()),
                secrets.token_hex(8).encode("ascii"),
                self.hostname.encode("utf-8"),
            )
            greeting += b" " + self._challenge
        self._send(greeting)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        """
        Nothing flagged or deleted: release the lock and log the avatar out.
        """
        self._lost = True
        self._closing = True
        self._producing = False
        self._lines.clear()
        self._cancelTimeout()
        if self._sender is not None:
            self._sender.stopProducing()
        self._sasl = None
        self._dropPendingLogin()
        if self.state != UPDATE:
            # In UPDATE the expunge under way releases the lock when done.
            self._endSession()

    def _endSession(self) -> None:
        """
        Release the maildrop lock and log out, once.
        """
        release, self._release = self._release, None
        logout, self._logout = self._logout, None
        self._mailbox = None
        self._reader = None
        self._account = None
        if release is not None:
            try:
                release()
            except Exception:
                log.failure("releasing the POP3 maildrop lock failed")
        if logout is not None:
            try:
                logout()
            except Exception:
                log.failure("POP3 avatar logout failed")

    def _close(self) -> None:
        """
        Stop answering and close the connection once what was written is sent.
        """
        self._closing = True
        self._lines.clear()
        self._cancelTimeout()
        if self._producing:
            # A transport with a producer that paused would wait for it to
            # resume before closing.
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    # Output flow (IPushProducer, for the transport)

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: answer no more commands, and pause
        the message being sent, until it drains.
        """
        self._writePaused = True
        if self._sender is not None:
            self._sender.pauseProducing()

    def resumeProducing(self) -> None:
        """
        The transport's buffer drained: go on sending, then answering.
        """
        self._writePaused = False
        if self._sender is not None:
            self._sender.resumeProducing()
        self._processQueue()

    def stopProducing(self) -> None:
        """
        The connection is going: stop the message being sent.
        """
        if self._sender is not None:
            self._sender.stopProducing()

    # Idle timeout

    def _resetTimeout(self) -> None:
        """
        The client is active: the idle timeout runs from now.  Only the
        time is noted (this runs for every line read); the timer, set once,
        finds out when it fires whether the session was idle that long, and
        if not is set again for the rest.
        """
        if self._closing or self.timeout is None:
            return
        self._lastActive = self.clock.seconds()
        if self._timeoutCall is None:
            self._timeoutCall = self.clock.callLater(self.timeout, self._timedOut)

    def _cancelTimeout(self) -> None:
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None

    def _timedOut(self) -> None:
        self._timeoutCall = None
        if self._closing:
            return
        left = self._lastActive + self.timeout - self.clock.seconds()
        if left > 0:
            self._timeoutCall = self.clock.callLater(left, self._timedOut)
            return
        log.info("POP3 session from {peer} timed out", peer=netutil.peerHost(self.transport))
        if self._sender is None:
            # Not in the middle of a message's text.
            self._send(b"-ERR Disconnected for inactivity.")
        self._close()

    # Input

    def dataReceived(self, data: bytes) -> None:
        """
        Split complete lines into the queue, enforcing the line limit before
        buffering, then answer what can be answered.
        """
        if self._closing:
            return
        self._resetTimeout()
        buffer = self._buffer + data if self._buffer else data
        lines = self._lines
        # The limit of the first line; any line after one queued is a
        # command (see _lineLimit).
        limit = self._lineLimit()
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                rest = buffer[start:]
                if self._discarding:
                    rest = b""
                elif len(rest) >= limit:
                    lines.append(None)
                    self._discarding = True
                    rest = b""
                self._buffer = rest
                break
            line = buffer[start:end + 1]
            start = end + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > limit:
                lines.append(None)
            else:
                lines.append(line.rstrip(b"\r\n"))
            limit = MAX_LINE
        self._processQueue()
        if len(self._lines) > MAX_PENDING_LINES and not self._readPaused and not self._closing:
            self._readPaused = True
            self.transport.pauseProducing()

    def _lineLimit(self) -> int:
        """
        The longest line accepted now: a SASL response awaited with nothing
        queued ahead of it may be longer than a command.
        """
        if self._sasl is not None and not self._lines:
            return MAX_SASL_LINE
        return MAX_LINE

    def _processQueue(self) -> None:
        """
        Answer queued lines in order until one needs to wait.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while self._lines and not self._busy and not self._closing and not self._writePaused:
                self._dispatch(self._lines.popleft())
        finally:
            self._processing = False
        if self._readPaused and not self._closing and len(self._lines) <= MAX_PENDING_LINES // 2:
            self._readPaused = False
            self.transport.resumeProducing()

    def _dispatch(self, line: Optional[bytes]) -> None:
        """
        Answer one line; no exception reaches the client as anything but
        C{-ERR}.
        """
        try:
            handler, self._sasl = self._sasl, None
            if line is None:
                self._dropPendingLogin()
                raise _BadCommand("Line too long")
            if handler is not None:
                result = handler(line)
            else:
                result = self._command(line)
            # (The None test first: Deferred is an ABC, whose isinstance
            # check is a Python call.)
            if result is not None and isinstance(result, defer.Deferred):
                self._wait(result)
        except _BadCommand as e:
            self._bad(str(e).encode("utf-8"))
        except Exception:
            log.failure("POP3 command failed")
            self._send(_INTERNAL_ERROR)

    def _command(self, line: bytes) -> Optional[defer.Deferred]:
        """
        Run the handler of one command line, checking the state.
        """
        verb, _, argument = line.partition(b" ")
        found = _VERBS.get(verb)
        if found is not None:
            name, states, method = found
        else:
            name = verb.decode("ascii", "replace").upper()
            handler = _COMMANDS.get(name)
            if handler is None:
                raise _BadCommand("Unknown command")
            states, method = handler
        if self.state not in states:
            raise _BadCommand(f"{name} is not valid in the {self.state} state")
        return method(self, argument)

    def _wait(self, d: defer.Deferred) -> None:
        """
        Hold later lines until C{d} (the answer to the current one) is done.
        """
        self._busy = True

        def done(result: Any) -> None:
            self._busy = False
            if isinstance(result, Failure):
                log.failure("POP3 command failed", result)
                if not self._closing:
                    self._send(_INTERNAL_ERROR)
            if not self._closing:
                self._resetTimeout()
            self._processQueue()

        d.addBoth(done)

    # Output

    def _send(self, line: bytes) -> None:
        if not self._lost:
            self.transport.write(line + b"\r\n")

    def _sendMulti(self, first: bytes, lines: Sequence[bytes]) -> None:
        """
        A multi-line response; C{lines} must not need dot-stuffing.
        """
        if not self._lost:
            self.transport.write(b"".join([first, b"\r\n"] + [l + b"\r\n" for l in lines] + [b".\r\n"]))

    def _bad(self, message: bytes) -> None:
        self._send(b"-ERR " + message)
        self._badCommands += 1
        limit = getattr(getattr(self, "factory", None), "maxErrors", MAX_BAD_COMMANDS)
        if self._badCommands >= limit and not self._closing:
            self._send(b"-ERR Too many bad commands.")
            self._close()

    # AUTHORIZATION

    def _cleartextAllowed(self) -> bool:
        return self.tls or netutil.cleartextAllowed(self.transport, self.allowPlaintext)

    def _stlsAvailable(self) -> bool:
        return self.contextFactory is not None and not self.tls

    def do_STLS(self, argument: bytes) -> None:
        """
        C{STLS} (RFC 2595 section 4): start TLS in the AUTHORIZATION state.
        Lines the client sent after the command, before the handshake, are
        dropped (they could be an attacker's injection).
        """
        if self.contextFactory is None:
            raise _BadCommand("STLS is not available")
        if argument.strip():
            raise _BadCommand("STLS takes no argument")
        if self.tls:
            raise _BadCommand("Command not permitted when TLS active")
        startTLS = getattr(self.transport, "startTLS", None)
        if startTLS is None:
            self._send(b"-ERR [SYS/TEMP] TLS not available")
            return
        self._send(b"+OK Begin TLS negotiation")
        self._lines.clear()
        self._buffer = b""
        self._discarding = False
        self._user = None
        try:
            startTLS(self.contextFactory)
        except Exception:
            log.failure("POP3 STLS failed for {peer}", peer=netutil.peerHost(self.transport))
            self._close()
            return
        self.tls = True
        if not netutil.isEncrypted(self.transport):
            # A wrapper between us and the TCP transport: mark it.
            alsoProvides(self.transport, ISSLTransport)

    def do_USER(self, argument: bytes) -> None:
        """
        C{USER name}: remember the login name for C{PASS}.
        """
        if not self._cleartextAllowed():
            self._send(_PLAINTEXT_REFUSED)
            return
        name = argument.strip()
        if not name:
            raise _BadCommand("USER needs a name")
        try:
            self._user = normalizeAddress(name.decode("utf-8"))
        except UnicodeDecodeError:
            raise _BadCommand("User name is not UTF-8")
        self._send(b"+OK")

    def do_PASS(self, argument: bytes) -> Optional[defer.Deferred]:
        """
        C{PASS password}: log in as the name given with C{USER}.  The
        password is the rest of the line, spaces included.
        """
        if not self._cleartextAllowed():
            self._send(_PLAINTEXT_REFUSED)
            return None
        user, self._user = self._user, None
        if user is None:
            raise _BadCommand("USER first")
        return self._login(UsernamePassword(user.encode("utf-8"), argument))

    def do_APOP(self, argument: bytes) -> Optional[defer.Deferred]:
        """
        C{APOP name digest} (RFC 1939 section 7), offered only when the
        greeting carried a timestamp.
        """
        if self._challenge is None:
            raise _BadCommand("APOP is not available")
        parts = argument.split()
        if len(parts) != 2:
            raise _BadCommand("APOP needs a name and a digest")
        try:
            user = normalizeAddress(parts[0].decode("utf-8"))
        except UnicodeDecodeError:
            raise _BadCommand("User name is not UTF-8")
        return self._login(APOPCredentials(user.encode("utf-8"), self._challenge, parts[1]))

    def mechanisms(self) -> List[str]:
        """
        The SASL mechanisms offered now (L{mailplat.auth.sasl.mechanismsFor}).
        """
        return sasl.mechanismsFor(self.portal, self._cleartextAllowed())

    def do_AUTH(self, argument: bytes) -> Optional[defer.Deferred]:
        """
        C{AUTH} lists the SASL mechanisms; C{AUTH mechanism
        [initial-response]} logs in (RFC 5034).
        """
        parts = argument.split()
        if not parts:
            self._sendMulti(b"+OK", [name.encode("ascii") for name in self.mechanisms()])
            return None
        name = parts[0].decode("ascii", "replace").upper()
        if name not in sasl.mechanismsFor(self.portal, True) or len(parts) > 2:
            raise _BadCommand("Unsupported authentication mechanism")
        if not self._cleartextAllowed():
            self._send(_PLAINTEXT_REFUSED)
            return None
        initial: Optional[bytes] = None
        if len(parts) == 2:
            try:
                initial = sasl.decodeResponse(parts[1], initial=True)
            except sasl.SASLError as e:
                raise _BadCommand(str(e))
        return self._saslStep(sasl.makeMechanism(name, self.portal, self.hostname), initial)

    def _saslStep(self, mechanism: sasl.Mechanism, response: Optional[bytes]) -> defer.Deferred:
        """
        Feed the mechanism one response: send its challenge (C{+ }), or log
        in with its credentials.
        """
        d = mechanism.respond(response)

        def answered(result: Any) -> Optional[defer.Deferred]:
            if self._lost:
                return None
            if isinstance(result, sasl.Challenge):
                self._sasl = lambda line: self._saslResponse(mechanism, line)
                self._send(b"+ " + result.encoded())
                return None
            return self._login(result, mechanism)

        def refused(failure: Failure) -> None:
            if self._lost:
                return
            if failure.check(sasl.SASLError):
                self._bad(str(failure.value).encode("utf-8", "replace"))
            elif failure.check(LoginFailed):
                log.info("POP3 authentication failed from {peer}", peer=netutil.peerHost(self.transport))
                self._authFailed()
            else:
                log.failure("POP3 authentication error", failure)
                self._send(_INTERNAL_ERROR)

        return d.addCallbacks(answered, refused)

    def _saslResponse(self, mechanism: sasl.Mechanism, line: bytes) -> Optional[defer.Deferred]:
        """
        A client line inside an exchange: a response or C{*}.
        """
        try:
            response = sasl.decodeResponse(line)
        except sasl.SASLError as e:
            raise _BadCommand(str(e))
        return self._saslStep(mechanism, response)

    def _saslFinal(self, line: bytes) -> Optional[defer.Deferred]:
        """
        The client's answer to the server-final data: empty completes the
        login, anything else abandons it.
        """
        pending, self._pendingLogin = self._pendingLogin, None
        assert pending is not None
        account, logout = pending
        if line.strip() not in (b"", b"="):
            logout()
            if line.strip() == b"*":
                raise _BadCommand("Authentication cancelled")
            raise _BadCommand("Expected an empty response")
        return defer.ensureDeferred(self._openMaildrop(account, logout))

    def _dropPendingLogin(self) -> None:
        pending, self._pendingLogin = self._pendingLogin, None
        if pending is not None:
            pending[1]()

    def _authFailed(self) -> None:
        self._bad(_AUTH_FAILED[len(b"-ERR "):])

    def _login(self, credentials: Any, mechanism: Optional[sasl.Mechanism] = None) -> defer.Deferred:
        """
        Log in through the portal, open and lock INBOX and take the
        snapshot that numbers the messages.  When the SASL C{mechanism}
        has server-final data, it is sent first and the maildrop is opened
        once the client answers it (L{_saslFinal}).
        """
        return defer.ensureDeferred(self._loginSteps(credentials, mechanism))

    async def _loginSteps(self, credentials: Any, mechanism: Optional[sasl.Mechanism] = None) -> None:
        try:
            # The client's address is the mind: the throttling portal counts
            # failures per address as well as per account.
            _, account, logout = await self.portal.login(credentials, netutil.peerHost(self.transport), IAccount)
        except LoginThrottled:
            log.info("POP3 authentication throttled for {user!r} from {peer}",
                     user=credentials.username, peer=netutil.peerHost(self.transport))
            if not self._lost:
                self._bad(b"[SYS/TEMP] Too many failed logins, try again later")
            return
        except LoginFailed:
            log.info("POP3 authentication failed for {user!r} from {peer}",
                     user=credentials.username, peer=netutil.peerHost(self.transport))
            if not self._lost:
                self._authFailed()
            return
        if self._lost:
            logout()
            return
        final = mechanism.serverFinal() if mechanism is not None else None
        if final is not None:
            # RFC 5034 4: additional data with success is one more
            # challenge, answered by an empty line.
            self._pendingLogin = (account, logout)
            self._sasl = self._saslFinal
            self._send(b"+ " + base64.b64encode(final))
            return
        await self._openMaildrop(account, logout)

    async def _openMaildrop(self, account: Any, logout: Callable[[], None]) -> None:
        """
        The login succeeded: lock INBOX, number its messages, answer +OK.
        """
        if self._lost:
            logout()
            return
        self._account, self._logout = account, logout
        try:
            mailbox = await account.getMailbox("INBOX")
            if self._lost:
                self._endSession()
                return
            self._release = await mailbox.lockExclusive()
            if self._lost:
                self._endSession()
                return
            self._mailbox = mailbox
            self._reader = IMessageReader(mailbox, None)
            infos = await mailbox.listMessages()
            if self._lost:
                self._endSession()
                return
        except MailboxLocked:
            self._endSession()
            self._send(b"-ERR [IN-USE] Mailbox is locked by another session")
            return
        except Exception:
            log.failure("POP3 login of {address} failed", address=getattr(account, "address", "?"))
            self._endSession()
            self._send(_INTERNAL_ERROR)
            return
        self._uids = array("Q", (info.uid for info in infos))
        self._sizes = array("Q", (info.size for info in infos))
        self._deleted = bytearray(len(self._uids))
        self._seen = bytearray(1 if "\\Seen" in info.flags else 0 for info in infos)
        self._retrieved = bytearray(len(self._uids))
        self._uidValidity = mailbox.uidValidity
        self._highest = 0
        self.state = TRANSACTION
        log.info("POP3 login {address} from {peer}", address=account.address,
                 peer=netutil.peerHost(self.transport))
        count, size = self._totals()
        self._send(b"+OK Logged in, %d messages (%d octets)" % (count, size))

    # TRANSACTION

    def _totals(self) -> Tuple[int, int]:
        count = size = 0
        for i, gone in enumerate(self._deleted):
            if not gone:
                count += 1
                size += self._sizes[i]
        return count, size

    def _message(self, argument: bytes) -> int:
        """
        The 0-based index of a live message from a message-number argument.
        """
        if not argument.isdigit() or len(argument) > 10:
            raise _BadCommand("Invalid message number")
        number = int(argument)
        if not 1 <= number <= len(self._uids):
            raise _BadCommand(f"No such message {number}")
        if self._deleted[number - 1]:
            raise _BadCommand(f"message {number} already deleted")
        return number - 1

    def _oneArgument(self, argument: bytes, command: str) -> Optional[bytes]:
        parts = argument.split()
        if len(parts) > 1:
            raise _BadCommand(f"{command} takes at most one argument")
        return parts[0] if parts else None

    def do_STAT(self, argument: bytes) -> None:
        """
        C{STAT}: count and size of the messages not deleted.
        """
        if argument.strip():
            raise _BadCommand("STAT takes no argument")
        self._send(b"+OK %d %d" % self._totals())

    def do_LIST(self, argument: bytes) -> None:
        """
        C{LIST [n]}: wire sizes of one or every message not deleted.
        """
        number = self._oneArgument(argument, "LIST")
        if number is not None:
            index = self._message(number)
            self._send(b"+OK %d %d" % (index + 1, self._sizes[index]))
            return
        count, size = self._totals()
        self._sendMulti(
            b"+OK %d messages (%d octets)" % (count, size),
            [b"%d %d" % (i + 1, self._sizes[i]) for i, gone in enumerate(self._deleted) if not gone],
        )

    def _uniqueId(self, index: int) -> bytes:
        return b"%08X%08X" % (self._uids[index], self._uidValidity)

    def do_UIDL(self, argument: bytes) -> None:
        """
        C{UIDL [n]}: unique ids, Dovecot's default C{%08Xu%08Xv} form, the
        same in every session while UIDVALIDITY holds.
        """
        number = self._oneArgument(argument, "UIDL")
        if number is not None:
            index = self._message(number)
            self._send(b"+OK %d %s" % (index + 1, self._uniqueId(index)))
            return
        self._sendMulti(
            b"+OK",
            [b"%d %s" % (i + 1, self._uniqueId(i)) for i, gone in enumerate(self._deleted) if not gone],
        )

    def do_RETR(self, argument: bytes) -> Optional[defer.Deferred]:
        """
        C{RETR n}: send the message; C{QUIT} will flag it \\Seen.
        """
        if argument.isdigit() and len(argument) <= 10:
            # The usual "RETR n" of a live message, checked as _message
            # does (which gives the errors).
            index = int(argument) - 1
            if 0 <= index < len(self._uids) and not self._deleted[index]:
                return self._sendMessage(index, None)
        number = self._oneArgument(argument, "RETR")
        if number is None:
            raise _BadCommand("RETR needs a message number")
        return self._sendMessage(self._message(number), None)

    def do_TOP(self, argument: bytes) -> Optional[defer.Deferred]:
        """
        C{TOP n k}: the header and the first C{k} body lines.
        """
        parts = argument.split()
        if len(parts) != 2:
            raise _BadCommand("TOP needs a message number and a line count")
        index = self._message(parts[0])
        if not parts[1].isdigit():
            raise _BadCommand("Invalid line count")
        return self._sendMessage(index, int(parts[1]))

    def _statusLine(self, index: int, topLines: Optional[int]) -> bytes:
        if topLines is None:
            return b"+OK %d octets\r\n" % (self._sizes[index],)
        return b"+OK\r\n"

    def _sendMessage(self, index: int, topLines: Optional[int]) -> Optional[defer.Deferred]:
        """
        Answer C{RETR} (C{topLines} L{None}) or C{TOP}: a small message the
        store reads synchronously at once, in one write; any other streamed.
        """
        reader = self._reader
        size = self._sizes[index]
        if reader is not None and size <= SMALL_MESSAGE:
            try:
                text = reader.readMessage(self._uids[index], SMALL_MESSAGE)
            except NoSuchMessage:
                self._send(b"-ERR Message %d no longer exists" % (index + 1,))
                return None
            if text is not None:
                # _statusLine and _sent, inline: this is every RETR.
                if topLines is None:
                    self.transport.write(multiLineResponse(b"+OK %d octets\r\n" % (size,), text))
                    self._retrieved[index] = 1
                else:
                    self.transport.write(multiLineResponse(b"+OK\r\n", TopFilter(topLines).feed(text)))
                if index >= self._highest:
                    self._highest = index + 1
                return None
        return defer.ensureDeferred(self._streamMessage(index, topLines))

    async def _streamMessage(self, index: int, topLines: Optional[int]) -> None:
        mailbox = self._mailbox
        assert mailbox is not None, "TRANSACTION state without a mailbox"
        uid = self._uids[index]
        try:
            source = await mailbox.openMessage(uid)
        except NoSuchMessage:
            self._send(b"-ERR Message %d no longer exists" % (index + 1,))
            return
        if self._lost:
            source.close()
            return
        sender = self._sender = MessageSender(self.transport, source, topLines, self._resetTimeout,
                                              self._statusLine(index, topLines))
        if self._writePaused:
            sender.pauseProducing()
        try:
            await sender.start()
        except ConnectionAbortedWhileSending:
            return
        except Exception:
            log.failure("POP3 could not read UID {uid}", uid=uid)
            if sender.wrote:
                # Part of the message is on the wire: no reply can follow it.
                self._close()
            else:
                self._send(_INTERNAL_ERROR)
            return
        finally:
            self._sender = None
        self._sent(index, topLines)

    def _sent(self, index: int, topLines: Optional[int]) -> None:
        """
        Message C{index} was sent: count it for C{LAST}, and for C{QUIT}
        to flag \\Seen if C{RETR} sent it.
        """
        if index >= self._highest:
            self._highest = index + 1
        if topLines is None:
            self._retrieved[index] = 1

    def do_DELE(self, argument: bytes) -> None:
        """
        C{DELE n}: mark for deletion at C{QUIT}.
        """
        number = self._oneArgument(argument, "DELE")
        if number is None:
            raise _BadCommand("DELE needs a message number")
        index = self._message(number)
        self._deleted[index] = 1
        self._send(b"+OK message %d deleted" % (index + 1,))

    def do_RSET(self, argument: bytes) -> None:
        """
        C{RSET}: undelete everything, reset C{LAST}, and forget what was
        retrieved (C{QUIT} flags nothing \\Seen for it, as in Dovecot).
        """
        self._deleted = bytearray(len(self._uids))
        self._retrieved = bytearray(len(self._uids))
        self._highest = 0
        count, size = self._totals()
        self._send(b"+OK %d messages (%d octets)" % (count, size))

    def do_LAST(self, argument: bytes) -> None:
        """
        C{LAST} (RFC 1725): the highest message number retrieved this session.
        """
        self._send(b"+OK %d" % (self._highest,))

    def do_NOOP(self, argument: bytes) -> None:
        """
        C{NOOP}.
        """
        self._send(b"+OK")

    def do_QUIT(self, argument: bytes) -> Optional[defer.Deferred]:
        """
        C{QUIT}: in TRANSACTION, enter UPDATE: flag \\Seen what was
        retrieved and remove what was deleted.
        """
        if self.state == AUTHORIZATION:
            self._send(b"+OK mailplat signing off")
            self._close()
            return None
        self.state = UPDATE
        return defer.ensureDeferred(self._update())

    async def _update(self) -> None:
        """
        The UPDATE state (RFC 1939 section 6): one C{setFlags} for the
        messages retrieved (not deleted, not already \\Seen), then one
        C{expunge} for those deleted.  The lock is held until both are
        done, even if the client goes meanwhile.
        """
        uids, deleted = self._uids, self._deleted
        gone = [uids[i] for i, d in enumerate(deleted) if d]
        seen = [uids[i] for i, (got, was, d) in enumerate(zip(self._retrieved, self._seen, deleted))
                if got and not was and not d]
        left = len(uids) - len(gone)
        ok = True
        mailbox = self._mailbox
        if seen and mailbox is not None:
            try:
                await mailbox.setFlags(seen, ["\\Seen"], "add")
            except Exception:
                # Nothing the client asked for is lost: the messages stay unseen.
                log.failure("POP3 could not flag {count} messages \\Seen", count=len(seen))
        if gone and mailbox is not None:
            try:
                await mailbox.expunge(gone, requireDeleted=False)
            except Exception:
                log.failure("POP3 expunge failed")
                ok = False
        self._endSession()
        if ok:
            self._send(b"+OK mailplat signing off (%d messages left)" % (left,))
        else:
            self._send(b"-ERR [SYS/TEMP] Some deleted messages not removed")
        self._close()

    # Both states

    def capabilities(self) -> List[bytes]:
        """
        The RFC 2449 capabilities this session offers now.
        """
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state == AUTHORIZATION and self._stlsAvailable():
            caps.append(b"STLS")
        if self._cleartextAllowed():
            caps += [b"USER", b" ".join([b"SASL"] + [name.encode("ascii") for name in self.mechanisms()])]
        caps += [b"EXPIRE NEVER", b"IMPLEMENTATION mailplat"]
        return caps

    def do_CAPA(self, argument: bytes) -> None:
        """
        C{CAPA} (RFC 2449).
        """
        self._sendMulti(b"+OK Capability list follows", self.capabilities())

    def do_HELP(self, argument: bytes) -> None:
        """
        C{HELP}: the commands valid in this state.
        """
        names = sorted(n for n, (states, _) in _COMMANDS.items() if self.state in states)
        if self._challenge is None and "APOP" in names:
            names.remove("APOP")
        if not self._stlsAvailable() and "STLS" in names:
            names.remove("STLS")
        self._sendMulti(b"+OK Commands follow", [n.encode("ascii") for n in names])


_BOTH = (AUTHORIZATION, TRANSACTION)
_COMMANDS = {
    "USER": ((AUTHORIZATION,), POP3Server.do_USER),
    "PASS": ((AUTHORIZATION,), POP3Server.do_PASS),
    "APOP": ((AUTHORIZATION,), POP3Server.do_APOP),
    "AUTH": ((AUTHORIZATION,), POP3Server.do_AUTH),
    "STLS": ((AUTHORIZATION,), POP3Server.do_STLS),
    "STAT": ((TRANSACTION,), POP3Server.do_STAT),
    "LIST": ((TRANSACTION,), POP3Server.do_LIST),
    "RETR": ((TRANSACTION,), POP3Server.do_RETR),
    "DELE": ((TRANSACTION,), POP3Server.do_DELE),
    "NOOP": ((TRANSACTION,), POP3Server.do_NOOP),
    "RSET": ((TRANSACTION,), POP3Server.do_RSET),
    "TOP": ((TRANSACTION,), POP3Server.do_TOP),
    "UIDL": ((TRANSACTION,), POP3Server.do_UIDL),
    "LAST": ((TRANSACTION,), POP3Server.do_LAST),
    "QUIT": (_BOTH, POP3Server.do_QUIT),
    "CAPA": (_BOTH, POP3Server.do_CAPA),
    "HELP": (_BOTH, POP3Server.do_HELP),
}
#: The verbs as clients send them (upper or lower case) to
#: C{(name, states, method)}: found without decoding the verb; any other
#: spelling is decoded and looked up in L{_COMMANDS}.
_VERBS = {spelling: (name, states, method) for name, (states, method) in _COMMANDS.items()
          for spelling in (name.encode("ascii"), name.lower().encode("ascii"))}


class POP3Factory(ServerFactory):
    """
    Builds L{POP3Server} sessions sharing one portal.

    @ivar portal: the cred portal; its realm gives L{IAccount} avatars.
    @ivar hostname: the name in the APOP timestamp.
    @ivar timeout: idle seconds before a session is closed (no UPDATE).
    @ivar clock: what schedules the idle timeout (the reactor by default).
    @ivar contextFactory: the TLS context source for C{STLS}
        (L{mailplat.tls.ServerTLSContext}), or L{None} (no STLS).
    @ivar allowPlaintext: accept passwords without TLS from any address.
    """

    protocol = POP3Server

    def __init__(self, portal: LoginPortal, hostname: str, timeout: float = 600.0,
                 clock: Optional[IReactorTime] = None, contextFactory: Optional[Any] = None,
                 allowPlaintext: bool = False) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.contextFactory = contextFactory
        self.allowPlaintext = allowPlaintext
        self.portal = portal
        self.hostname = hostname
        self.timeout = timeout
        self.clock = clock

    def buildProtocol(self, addr: Any) -> POP3Server:
        """
        A new session for a connection from C{addr}.
        """
        p = POP3Server(self.portal, self.hostname, self.timeout, self.clock,
                       contextFactory=self.contextFactory, allowPlaintext=self.allowPlaintext)
        p.factory = self
        return p
