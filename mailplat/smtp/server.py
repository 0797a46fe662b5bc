"""
mailplat's ESMTP server protocol (RFC 5321), written on C{twisted.internet}.

The protocol only parses commands, keeps the state of one session and
transaction, streams message data to a temporary file and turns the answers
of an L{mailplat.interfaces.IDelivery} into replies.  Every decision about
senders, recipients and where mail goes belongs to the delivery object.

Extensions advertised in reply to C{EHLO}: PIPELINING (RFC 2920), SIZE
(RFC 1870), 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES (RFC 2034 and
3463), DSN (RFC 3461: C{RET}, C{ENVID}, C{NOTIFY}, C{ORCPT}), SMTPUTF8
(RFC 6531: UTF-8 addresses in a transaction whose C{MAIL} says so),
CHUNKING (RFC 3030: C{BDAT}; BINARYMIME is not offered), STARTTLS (RFC 3207) when the factory has a TLS context and the
connection is not encrypted yet, and AUTH (RFC 4954: PLAIN, LOGIN, and
CRAM-MD5 and SCRAM-SHA-256 when a checker can verify them, all run by
L{mailplat.auth.sasl}) when the factory has a portal and
passwords may be sent on this connection (over TLS, from loopback, or
anywhere with C{allow_plaintext}).  Every reply except the greeting and the
C{HELO}/C{EHLO} lines carries an enhanced status code.

A factory has a role: C{"mx"} (mail from anywhere; AUTH optional),
C{"submission"} (AUTH required before C{MAIL}, and only for a sender
address the user owns) or C{"smtps"} (submission over implicit TLS).

Input is handled without C{LineReceiver}: the command and text line limits
of RFC 5321 4.5.3.1 are checked before anything is buffered, and the end of
message data is recognised only as the exact sequence CR LF "." CR LF (a
bare CR or LF never ends it, and a message containing one is refused), so
that SMTP smuggling through this server is impossible.  C{BDAT} chunks are
read by exact octet count, so their content is never looked at for an end
marker (bare CR and LF are accepted there, RFC 3030 2).

The envelope parameters of the current transaction (DSN, SMTPUTF8, BODY)
are kept in C{session.transaction}, an L{Envelope}, which the delivery
reads during L{IDelivery.deliver}.
"""

import base64
import email.utils
import secrets
import tempfile
from datetime import datetime, timezone
from typing import IO, Any, Callable, List, Optional, Tuple, cast

from twisted.cred.error import LoginFailed
from twisted.internet import protocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from mailplat import netutil
from mailplat.address import normalizeAddress
from mailplat.auth import sasl
from mailplat.auth.throttle import LoginThrottled
from mailplat.errors import SMTPReply
from mailplat.interfaces import IDelivery, ISMTPAvatar, LoginPortal
from mailplat.smtp.envelope import Envelope, RecipientParameters
from mailplat.smtp.syntax import (
    PathSyntaxError,
    addressToASCIIDomain,
    decodeXtext,
    parseNotify,
    parseOrcpt,
    parseParameters,
    parsePath,
    validHeloArgument,
)

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
MAX_COMMAND_LINE = 512
# RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF, not
# counting a leading dot added for transparency.
MAX_TEXT_LINE = 1000
# RFC 4954 4: a line of an AUTH exchange is at most 12288 octets with CRLF.
MAX_SASL_LINE = 12288
# Message data up to this size always stays in memory; larger spills to
# disk, unless the factory's shared budget (SMTPFactory.spoolMemory) lends
# the message room for up to SPOOL_MEMORY_MAX octets in memory.
SPOOL_THRESHOLD = 64 * 1024
SPOOL_MEMORY_MAX = 1024 * 1024
# Room for the Received header beyond a declared SIZE.
_HEADER_ROOM = 1024

_ERROR_LIMIT = 20

#: The listener roles (see the module docstring).
ROLES = ("mx", "submission", "smtps")

_CRLF = b"\r\n"
_END_OF_DATA = b"\r\n.\r\n"
_DOT_LINE = b".\r\n"


class SMTPSession:
    """
    What the server knows about one SMTP connection; passed as the first
    argument of every L{IDelivery} call.  The same object lives as long as
    the connection, so a delivery may read it at any time but must not
    change it.

    @ivar hostname: our own host name, as in the greeting (C{str}).
    @ivar helo: the name the client gave in its latest C{HELO}/C{EHLO}
        (C{str}), or L{None} before it has given one.
    @ivar esmtp: C{True} when the client greeted with C{EHLO}.
    @ivar peer: the client's address, C{transport.getPeer()} (an
        L{twisted.internet.interfaces.IAddress}).
    @ivar peerHost: the client's host as text (C{"192.0.2.1"}), for logs
        and headers.
    @ivar tls: C{True} when the connection is encrypted.
    @ivar authenticated: the address the client logged in as with
        C{AUTH} (C{str}, normalised), or L{None}.
    @ivar role: the listener's role, C{"mx"}, C{"submission"} or
        C{"smtps"}.
    @ivar transaction: the L{Envelope} of the current transaction (its
        DSN, SMTPUTF8 and BODY parameters) from an accepted C{MAIL} until
        the transaction ends (after C{deliver} answered, or C{RSET}), else
        L{None}.  A delivery reads it in C{validateRecipient} and
        C{deliver}.
    """

    def __init__(
        self,
        hostname: str,
        peer: Any,
        peerHost: str,
        tls: bool = False,
        role: str = "mx",
    ) -> None:
        self.hostname = hostname
        self.role = role
        self.helo: Optional[str] = None
        self.esmtp = False
        self.peer = peer
        self.peerHost = peerHost
        self.tls = tls
        self.authenticated: Optional[str] = None
        self.transaction: Optional[Envelope] = None

    def __repr__(self) -> str:
        return f"<SMTPSession peer={self.peerHost!r} helo={self.helo!r}>"


def _addressLiteral(host: str) -> str:
    """
    C{host} as an RFC 5321 address literal for the TCP-info of a
    C{Received} header (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]}); other
    peers (UNIX sockets) become a plain comment word.
    """
    if ":" in host:
        return f"[IPv6:{host}]"
    if host and all(c.isdigit() or c == "." for c in host):
        return f"[{host}]"
    return "".join(c for c in host if c.isalnum() or c in "-._") or "unknown"


class _Spool(tempfile.SpooledTemporaryFile[bytes]):
    """
    The spool of one message: in memory up to L{SPOOL_THRESHOLD}, or up to
    what the factory's budget lends it (given back when it is closed),
    then a temporary file.  A message that stays in memory costs no file
    created and removed on disk.
    """

    def __init__(self, factory: "SMTPFactory", declared: Optional[int] = None) -> None:
        """
        @param declared: the size the client declared with C{SIZE}, if it
            did: no more than that (and room for our trace header) is
            borrowed.
        """
        self._factory: Optional["SMTPFactory"] = factory
        self._lent = factory.lendSpoolMemory(None if declared is None else declared + _HEADER_ROOM)
        super().__init__(max_size=max(SPOOL_THRESHOLD, self._lent))

    def close(self) -> None:
        factory, self._factory = self._factory, None
        if factory is not None and self._lent:
            factory.returnSpoolMemory(self._lent)
        super().close()


class _Reply:
    """
    One reply waiting to be written: code, enhanced code, text lines.
    """

    __slots__ = ("code", "enhanced", "lines")

    def __init__(self, code: int, enhanced: Optional[str], *lines: str) -> None:
        self.code = code
        self.enhanced = enhanced
        self.lines = lines


class SMTPServer(protocol.Protocol, TimeoutMixin):
    """
    One inbound SMTP connection.  Made by L{SMTPFactory}; see the module
    docstring for what it implements.

    Commands are handled strictly one after another.  When a delivery call
    answers with a Deferred that has not fired, the transport is paused and
    further input waits in the buffer until the reply has been written, so
    replies always come in command order (RFC 2920).  Pausing, rather than
    reading on into the buffer, also keeps a client's half-close unread
    until the commands before it are answered: neither Twisted's transport
    nor our wrappers are half-closeable, so an end of file read early would
    close the connection with pipelined commands still unanswered (the
    smuggling test in C{tests/e2e/test_clients.py} half-closes).

    @ivar session: the L{SMTPSession} of this connection.
    """

    factory: "SMTPFactory"
    session: SMTPSession
    transport: netutil.IConnectionTransport
    _log = Logger()

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._mode = "command"  # or "data"
        self._skipLine = False  # discarding the rest of an overlong line
        self._skipLastCR = False  # the last discarded octet was CR
        self._busy = False
        self._paused = False
        self._processing = False
        self._closing = False
        self._disconnected = False
        self._errors = 0
        self._logout: Optional[Callable[[], None]] = None
        self._sasl: Optional[Callable[[bytes], None]] = None
        self._pendingLogin: Optional[Any] = None  # SCRAM: awaiting the empty final response
        self._badUTF8 = False
        self._resetTransaction()

    # Connection life.

    def callLater(self, period: float, func: Callable[[], None]) -> Any:
        """
        Schedule the idle timeout on the factory's clock (used by
        L{TimeoutMixin}).
        """
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        """
        Greet the client, turn on C{TCP_NODELAY} and start the idle timer.
        """
        netutil.setNoDelay(self.transport)
        self.session = SMTPSession(
            self.factory.hostname,
            self.transport.getPeer(),
            netutil.peerHost(self.transport),
            netutil.isEncrypted(self.transport),
            self.factory.role,
        )
        self.setTimeout(self.factory.timeout)
        self.transport.write(f"220 {self.factory.hostname} ESMTP mailplat\r\n".encode("ascii"))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """
        Stop the timer and drop any half-received message.
        """
        self._disconnected = True
        self.setTimeout(None)
        self._closeFile()
        self._buffer = bytearray()
        self._endLogin()

    def timeoutConnection(self) -> None:
        """
        The client was idle too long: say so (RFC 5321 4.5.3.2) and close.
        """
        self._log.info("SMTP idle timeout for {peer}", peer=self.session.peerHost)
        self._write(_Reply(421, "4.4.2", f"{self.factory.hostname} Idle timeout, closing connection"))
        self._close()

    def dataReceived(self, data: bytes) -> None:
        """
        Buffer C{data} and handle whatever complete input it makes.
        """
        if self._closing or self._disconnected:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()

    # Replies.

    def _write(self, reply: _Reply) -> None:
        if self._disconnected:
            return
        out = []
        last = len(reply.lines) - 1
        for i, line in enumerate(reply.lines):
            sep = " " if i == last else "-"
            if reply.enhanced:
                out.append(f"{reply.code}{sep}{reply.enhanced} {line}\r\n")
            else:
                out.append(f"{reply.code}{sep}{line}\r\n")
        self.transport.write("".join(out).encode("ascii", "replace"))

    def sendReply(self, code: int, enhanced: Optional[str], *lines: str) -> None:
        """
        Answer the current command (for subclasses adding verbs): one line
        per element of C{lines}, each with C{enhanced} when given.  A 421
        reply closes the connection; 5xx replies count towards the error
        limit.
        """
        self._reply(_Reply(code, enhanced, *(lines or ("",))))

    def _reply(self, reply: _Reply) -> None:
        """
        Write a reply to a command; count permanent failures and give up on
        a client that makes too many.
        """
        if self._closing:
            return
        self._write(reply)
        if reply.code == 421:
            # RFC 5321 3.8: 421 announces that the server closes.
            self._close()
        elif reply.code >= 500:
            self._errors += 1
            if self._errors >= self.factory.maxErrors:
                self._log.info("SMTP client {peer} made too many errors", peer=self.session.peerHost)
                self._write(_Reply(421, "4.7.0", f"{self.factory.hostname} Too many errors, closing connection"))
                self._close()

    def _close(self) -> None:
        self._closing = True
        self.setTimeout(None)
        self._buffer = bytearray()
        self.transport.loseConnection()

    # Input processing.

    def _process(self) -> None:
        """
        Handle buffered input until it is used up, or a delivery call is
        outstanding, or the connection is closing.
        """
        if self._processing:
            return
        self._processing = True
        try:
            while not (self._busy or self._closing or self._disconnected):
                if self._mode == "data":
                    progressed = self._dataStep()
                elif self._mode == "bdat":
                    progressed = self._bdatStep()
                else:
                    progressed = self._commandStep()
                if not progressed:
                    break
        finally:
            self._processing = False

    def _commandStep(self) -> bool:
        """
        Handle one command line from the buffer, or discard an overlong
        line's octets.

        @return: whether anything was consumed.
        """
        buf = self._buffer
        end = buf.find(b"\n")
        limit = MAX_SASL_LINE if self._mode == "auth" else MAX_COMMAND_LINE
        if self._skipLine:
            if end == -1:
                del buf[:]
                return False
            del buf[: end + 1]
            self._skipLine = False
            self._lineTooLong()
            return True
        if end == -1:
            if len(buf) >= limit:
                # The line can no longer fit, whatever follows: drop what we
                # have and everything up to its end, and answer then.
                del buf[:]
                self._skipLine = True
            return False
        if end + 1 > limit:
            del buf[: end + 1]
            self._lineTooLong()
            return True
        raw = bytes(buf[:end])
        del buf[: end + 1]
        if not raw.endswith(b"\r") or b"\r" in raw[:-1]:
            if self._mode == "auth":
                self._endSASL()
            self._reply(_Reply(500, "5.5.2", "Bare CR or LF not allowed, lines end with CRLF"))
            return True
        if self._mode == "auth":
            step = self._sasl
            assert step is not None
            step(raw[:-1])
        else:
            line = raw[:-1]
            try:
                text = line.decode("utf-8")
                self._badUTF8 = False
            except UnicodeDecodeError:
                # Kept readable for the verbs that ignore their argument;
                # MAIL and RCPT refuse it (501 5.6.7).
                text = line.decode("latin-1")
                self._badUTF8 = True
            self._command(text)
        return True

    def _lineTooLong(self) -> None:
        if self._mode == "auth":
            self._endSASL()
            self._reply(_Reply(500, "5.5.6", "Authentication exchange line is too long"))
        else:
            self._reply(_Reply(500, "5.5.2", "Line too long"))

    def _command(self, line: str) -> None:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        handler = None
        if verb.isascii() and verb.isalpha():
            handler = getattr(self, "do_" + verb, None)
        if handler is None:
            if verb in self.notImplemented:
                self._reply(_Reply(502, "5.5.1", "Command not implemented"))
            else:
                self._reply(_Reply(500, "5.5.2", "Command unrecognized"))
            return
        handler(arg.strip(" "))

    def _await(self, call: Callable[..., Any], args: tuple, onSuccess: Callable[[Any], _Reply], onDone: Optional[Callable[[], None]] = None) -> None:
        """
        Call a delivery method and reply when its result (a value, a
        Deferred, an exception) is known; meanwhile buffer further input.

        @param onSuccess: makes the reply from the result (and updates the
            state); called only on success.
        @param onDone: called after the reply whatever the outcome.
        """
        self._busy = True
        d = maybeDeferred(call, *args)

        def succeeded(result: Any) -> _Reply:
            return onSuccess(result)

        def failed(failure: Failure) -> _Reply:
            if failure.check(SMTPReply):
                exc = cast(SMTPReply, failure.value)
                code = exc.code
                if isinstance(code, int) and 200 <= code <= 599:
                    return _Reply(code, exc.enhanced, *(str(exc.text).splitlines() or [""]))
            self._log.failure(
                "SMTP delivery call {call} failed for {peer}",
                failure,
                call=getattr(call, "__name__", call),
                peer=self.session.peerHost,
            )
            return _Reply(451, "4.3.0", "Temporary failure, please try again later")

        def finished(reply: _Reply) -> None:
            self._busy = False
            if onDone is not None:
                onDone()
            if self._disconnected:
                return
            self._reply(reply)
            if self._paused:
                self._paused = False
                if not self._closing:
                    self.setTimeout(self.factory.timeout)
                    self.transport.resumeProducing()
            self._process()

        d.addCallbacks(succeeded, failed)
        d.addCallback(finished)
        d.addErrback(lambda f: self._log.failure("SMTP server bug", f))
        if self._busy and not self._disconnected:
            self._paused = True
            self.setTimeout(None)
            self.transport.pauseProducing()

    # Transaction state.

    def _resetTransaction(self) -> None:
        self._inTransaction = False
        self._sender: Optional[str] = None
        self._recipients: List[str] = []
        self._rcptAttempted = False
        self._envelope = Envelope()
        self._bdat = False  # a BDAT was accepted in this transaction
        self._bdatRemaining = 0
        self._bdatLast = False
        self._bdatRefusal: Optional[_Reply] = None
        session = getattr(self, "session", None)
        if session is not None:
            session.transaction = None
        self._closeFile()

    def _closeFile(self) -> None:
        f = getattr(self, "_file", None)
        self._file: Optional[IO[bytes]] = None
        if f is not None:
            f.close()

    # Verbs.

    def extensions(self) -> List[str]:
        """
        The EHLO keywords (with their parameters) this session offers, in
        the order they are listed.  A subclass adding a verb extends this
        list.
        """
        keywords = [
            "PIPELINING",
            f"SIZE {self.factory.maxMessageSize}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "DSN",
            "SMTPUTF8",
            "CHUNKING",
        ]
        if self._startTLSAvailable():
            keywords.append("STARTTLS")
        mechanisms = self.mechanisms()
        if mechanisms:
            keywords.append("AUTH " + " ".join(mechanisms))
        return keywords

    # TLS and authentication.

    def _startTLSAvailable(self) -> bool:
        return self.factory.contextFactory is not None and not self.session.tls

    def _authAllowed(self) -> bool:
        """
        Whether a password may be sent now: over TLS, from loopback, or
        anywhere when C{allow_plaintext} is set.
        """
        return self.session.tls or netutil.cleartextAllowed(self.transport, self.factory.allowPlaintext)

    def mechanisms(self) -> List[str]:
        """
        The SASL mechanisms offered on this connection (see
        L{mailplat.auth.sasl.mechanismsFor}): none without a portal or where
        passwords may not be sent; PLAIN and LOGIN; CRAM-MD5 and
        SCRAM-SHA-256 when a checker can verify them.
        """
        return sasl.mechanismsFor(self.factory.portal, self._authAllowed())

    def _knownMechanisms(self) -> List[str]:
        """
        The mechanisms the portal could verify, whatever the connection.
        """
        return sasl.mechanismsFor(self.factory.portal, True)

    def do_STARTTLS(self, arg: str) -> None:
        """
        C{STARTTLS} (RFC 3207): reply, forget everything the client said,
        drop whatever it pipelined after the command (the plaintext
        injection attack), then negotiate TLS; the client must EHLO again.
        """
        if self.factory.contextFactory is None:
            self._reply(_Reply(502, "5.5.1", "Command not implemented"))
            return
        if arg:
            self._reply(_Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if self.session.tls:
            self._reply(_Reply(503, "5.5.1", "TLS already active"))
            return
        if self._inTransaction:
            self._reply(_Reply(503, "5.5.1", "STARTTLS not permitted during a mail transaction"))
            return
        startTLS = getattr(self.transport, "startTLS", None)
        if startTLS is None:
            self._reply(_Reply(454, "4.7.0", "TLS not available due to temporary reason"))
            return
        self._reply(_Reply(220, "2.0.0", "Ready to start TLS"))
        # RFC 3207 4.2: discard any knowledge obtained from the client.
        del self._buffer[:]
        self._skipLine = False
        self._resetTransaction()
        self._endLogin()
        self.session.helo = None
        self.session.esmtp = False
        self.session.authenticated = None
        try:
            startTLS(self.factory.contextFactory)
        except Exception:
            self._log.failure("SMTP STARTTLS failed for {peer}", peer=self.session.peerHost)
            self._close()
            return
        self.session.tls = True
        if not netutil.isEncrypted(self.transport):
            # A wrapper between us and the TCP transport: say it is TLS now,
            # so that netutil.cleartextAllowed sees it.
            alsoProvides(self.transport, ISSLTransport)

    def do_AUTH(self, arg: str) -> None:
        """
        C{AUTH mechanism [initial-response]} (RFC 4954), run by the shared
        SASL layer (L{mailplat.auth.sasl}).
        """
        known = self._knownMechanisms()
        if not known:
            self._reply(_Reply(502, "5.5.1", "Command not implemented"))
            return
        if not self.session.esmtp:
            self._reply(_Reply(503, "5.5.1", "Send EHLO first"))
            return
        if self.session.authenticated is not None:
            self._reply(_Reply(503, "5.5.1", "Already authenticated"))
            return
        if self._inTransaction:
            self._reply(_Reply(503, "5.5.1", "AUTH not permitted during a mail transaction"))
            return
        parts = arg.split()
        if not parts or len(parts) > 2:
            self._reply(_Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        name = parts[0].upper()
        if name not in known:
            self._reply(_Reply(504, "5.5.4", "Unrecognized authentication type"))
            return
        if not self._authAllowed():
            self._reply(_Reply(538, "5.7.11", "Encryption required for requested authentication mechanism"))
            return
        initial: Optional[bytes] = None
        if len(parts) == 2:
            try:
                initial = sasl.decodeResponse(parts[1].encode("latin-1"), initial=True)
            except sasl.SASLError:
                self._reply(_Reply(501, "5.5.2", "Cannot decode response"))
                return
        mechanism = sasl.makeMechanism(name, self.factory.portal, self.factory.hostname)
        self._saslStep(mechanism, initial)

    def _saslStep(self, mechanism: sasl.Mechanism, response: Optional[bytes]) -> None:
        """
        Feed the mechanism one response; send its challenge (334), or log
        in with its credentials.
        """

        def call() -> Deferred:
            d = mechanism.respond(response)

            def proceed(result: Any) -> Any:
                if isinstance(result, sasl.Challenge):
                    return result
                return self._portalLogin(result)

            def malformed(failure: Failure) -> Any:
                if failure.check(sasl.SASLError):
                    raise SMTPReply(501, "5.5.2", str(failure.value))
                if failure.check(LoginFailed):
                    self._log.info("SMTP authentication failed from {peer}", peer=self.session.peerHost)
                    raise SMTPReply(535, "5.7.8", "Authentication credentials invalid")
                return failure

            return d.addCallbacks(proceed, malformed)

        def answered(result: Any) -> _Reply:
            if isinstance(result, sasl.Challenge):
                self._expectResponse(lambda line: self._saslResponse(mechanism, line))
                return _Reply(334, None, result.encoded().decode("ascii"))
            final = mechanism.serverFinal()
            if final is None:
                return self._loggedIn(result)
            # RFC 4954 4: additional data with success goes in one more
            # 334, answered by an empty line.
            self._pendingLogin = result
            self._expectResponse(self._saslFinal)
            return _Reply(334, None, base64.b64encode(final).decode("ascii"))

        def done() -> None:
            if self._sasl is None:
                self._mode = "command"

        self._sasl = None
        self._await(call, (), answered, done)

    def _expectResponse(self, then: Callable[[bytes], None]) -> None:
        """
        Read the next line as a SASL response and hand it to C{then}.
        """
        self._mode = "auth"

        def step(line: bytes) -> None:
            self._mode = "command"
            self._sasl = None
            then(line)

        self._sasl = step

    def _saslResponse(self, mechanism: sasl.Mechanism, line: bytes) -> None:
        try:
            response = sasl.decodeResponse(line)
        except sasl.SASLCancelled:
            self._reply(_Reply(501, "5.0.0", "Authentication cancelled"))
            return
        except sasl.SASLError:
            self._reply(_Reply(501, "5.5.2", "Cannot decode response"))
            return
        self._saslStep(mechanism, response)

    def _saslFinal(self, line: bytes) -> None:
        """
        The client's answer to the server-final data: empty completes the
        login, anything else (C{*} included) abandons it.
        """
        result, self._pendingLogin = self._pendingLogin, None
        assert result is not None
        if line.strip() in (b"", b"="):
            self._reply(self._loggedIn(result))
            return
        _, _, logout = result
        logout()
        if line.strip() == b"*":
            self._reply(_Reply(501, "5.0.0", "Authentication cancelled"))
        else:
            self._reply(_Reply(501, "5.5.2", "Expected an empty response"))

    def _endSASL(self) -> None:
        """
        Abandon the exchange (a bad line, a line too long, the connection
        lost), logging out a login that waited for the final response.
        """
        self._mode = "command"
        self._sasl = None
        pending, self._pendingLogin = self._pendingLogin, None
        if pending is not None:
            pending[2]()

    def _portalLogin(self, credentials: Any) -> Deferred:
        """
        Ask the portal for an L{ISMTPAvatar} with C{credentials}; failures
        become L{SMTPReply}: 535 on refusal, 454 when throttled or when the
        checker failed.
        """
        portal = self.factory.portal
        assert portal is not None
        # The client's address is the mind: the throttling portal counts
        # failures per address as well as per account.
        d = portal.login(credentials, self.session.peerHost, ISMTPAvatar)

        def refused(failure: Failure) -> Any:
            if failure.check(LoginThrottled):
                self._log.info("SMTP authentication throttled for {peer}", peer=self.session.peerHost)
                raise SMTPReply(454, "4.7.0", "Too many failed logins, try again later")
            if failure.check(LoginFailed):
                self._log.info("SMTP authentication failed from {peer}", peer=self.session.peerHost)
                raise SMTPReply(535, "5.7.8", "Authentication credentials invalid")
            self._log.failure("SMTP authentication error for {peer}", failure, peer=self.session.peerHost)
            raise SMTPReply(454, "4.7.0", "Temporary authentication failure")

        return d.addErrback(refused)

    def _loggedIn(self, result: Any) -> _Reply:
        """
        The portal's C{(interface, avatar, logout)}: the session is
        authenticated; 235.
        """
        _, avatar, logout = result
        if self._disconnected:
            logout()
            return _Reply(235, "2.7.0", "Authentication successful")
        self._logout = logout
        self.session.authenticated = avatar.address
        self._log.info("SMTP login {address} from {peer}", address=avatar.address, peer=self.session.peerHost)
        return _Reply(235, "2.7.0", "Authentication successful")

    def _endLogin(self) -> None:
        self._endSASL()
        logout, self._logout = self._logout, None
        if logout is not None:
            try:
                logout()
            except Exception:
                self._log.failure("SMTP avatar logout failed")

    def do_HELO(self, arg: str) -> None:
        """
        C{HELO domain}: start an SMTP (not ESMTP) session.
        """
        self._greet(arg, esmtp=False)

    def do_EHLO(self, arg: str) -> None:
        """
        C{EHLO domain}: start an ESMTP session and list the extensions.
        """
        self._greet(arg, esmtp=True)

    def _greet(self, arg: str, esmtp: bool) -> None:
        verb = "EHLO" if esmtp else "HELO"
        if not arg:
            self._reply(_Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
            return
        if not validHeloArgument(arg):
            self._reply(_Reply(501, "5.5.4", "Invalid domain name"))
            return
        self._resetTransaction()
        self.session.helo = arg
        self.session.esmtp = esmtp
        hostname = self.factory.hostname
        if esmtp:
            self._reply(_Reply(250, None, f"{hostname} Hello {arg}", *self.extensions()))
        else:
            self._reply(_Reply(250, None, f"{hostname} Hello {arg}"))

    def do_MAIL(self, arg: str) -> None:
        """
        C{MAIL FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME]}: start a transaction.
        """
        if self.session.helo is None:
            self._reply(_Reply(503, "5.5.1", "Send HELO/EHLO first"))
            return
        if self._inTransaction:
            self._reply(_Reply(503, "5.5.1", "Sender already specified"))
            return
        submission = self.factory.role != "mx"
        if submission and self.session.authenticated is None:
            self._reply(_Reply(530, "5.7.0", "Authentication required"))
            return
        if arg[:5].upper() != "FROM:":
            self._reply(_Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return
        rest = arg[5:]
        if rest.startswith(" "):
            rest = rest[1:]
        if self._badUTF8:
            self._reply(_Reply(501, "5.6.7", "Sender address is not valid UTF-8"))
            return
        try:
            sender, rest = parsePath(rest, allowNull=True, utf8=True)
        except PathSyntaxError as e:
            self._reply(_Reply(501, "5.1.7", f"Bad sender address: {e}"))
            return
        envelope = Envelope()
        refusal = self._checkMailParameters(rest, envelope)
        if refusal is not None:
            self._reply(refusal)
            return
        if sender is not None and not sender.isascii():
            if not envelope.smtputf8:
                # RFC 6531 3.5.
                self._reply(_Reply(553, "5.6.7", "Non-ASCII addresses not permitted for that sender"))
                return
            try:
                sender = addressToASCIIDomain(sender)
            except ValueError as e:
                self._reply(_Reply(501, "5.1.7", f"Bad sender address: {e}"))
                return
        if sender is not None:
            sender = normalizeAddress(sender)
            if submission and sender != self.session.authenticated:
                # An authenticated user may send only as themselves (the
                # null sender of a notification is allowed).
                self._reply(_Reply(553, "5.7.1", "Sender address rejected: not owned by user"))
                return

        envelope.sender = sender

        def accepted(result: object) -> _Reply:
            self._inTransaction = True
            self._sender = sender
            self._recipients = []
            self._rcptAttempted = False
            self._envelope = envelope
            self.session.transaction = envelope
            return _Reply(250, "2.1.0", "Sender OK")

        self._await(self.factory.delivery.validateSender, (self.session, sender), accepted)

    def _checkMailParameters(self, text: str, envelope: Envelope) -> Optional[_Reply]:
        """
        Check the ESMTP parameters of C{MAIL} and record them in
        C{envelope}; the refusal, or L{None} when they are acceptable.
        """
        try:
            params = parseParameters(text)
        except ValueError as e:
            return _Reply(501, "5.5.4", str(e))
        if params and not self.session.esmtp:
            return _Reply(555, "5.5.4", "Parameters not allowed after HELO")
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    return _Reply(501, "5.5.4", "Syntax error in SIZE parameter")
                if int(value) > self.factory.maxMessageSize:
                    return _Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
                envelope.size = int(value)
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return _Reply(555, "5.5.4", "Unsupported BODY parameter")
                envelope.body = value.upper()
            elif key == "RET":
                # RFC 3461 4.3.
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    return _Reply(501, "5.5.4", "RET is FULL or HDRS")
                envelope.ret = value.upper()
            elif key == "ENVID":
                # RFC 3461 4.4: xtext, at most 100 characters.
                if value is None or len(value) > 100:
                    return _Reply(501, "5.5.4", "Syntax error in ENVID parameter")
                try:
                    envelope.envid = decodeXtext(value)
                except ValueError:
                    return _Reply(501, "5.5.4", "ENVID is not valid xtext")
            elif key == "SMTPUTF8":
                if value is not None:
                    return _Reply(501, "5.5.4", "SMTPUTF8 takes no value")
                envelope.smtputf8 = True
            elif key == "AUTH" and self._knownMechanisms():
                # RFC 4954 5: accepted, and not trusted (we relay nothing on
                # another server's word).
                if value is None:
                    return _Reply(501, "5.5.4", "Syntax error in AUTH parameter")
            else:
                return _Reply(555, "5.5.4", f"Unsupported parameter {key}")
        return None

    def do_RCPT(self, arg: str) -> None:
        """
        C{RCPT TO:<path>}: add a recipient.
        """
        if not self._inTransaction:
            self._reply(_Reply(503, "5.5.1", "Need MAIL command"))
            return
        if arg[:3].upper() != "TO:":
            self._reply(_Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return
        rest = arg[3:]
        if rest.startswith(" "):
            rest = rest[1:]
        if self._badUTF8:
            self._reply(_Reply(501, "5.6.7", "Recipient address is not valid UTF-8"))
            return
        try:
            recipient, rest = parsePath(rest, allowPostmaster=True, utf8=True)
        except PathSyntaxError as e:
            self._reply(_Reply(501, "5.1.3", f"Bad recipient address: {e}"))
            return
        parameters = RecipientParameters()
        refusal = self._checkRcptParameters(rest, parameters)
        if refusal is not None:
            self._reply(refusal)
            return
        assert recipient is not None
        if not recipient.isascii():
            if not self._envelope.smtputf8:
                # RFC 6531 3.5.
                self._reply(_Reply(553, "5.6.7", "Non-ASCII addresses not permitted for that recipient"))
                return
            try:
                recipient = addressToASCIIDomain(recipient)
            except ValueError as e:
                self._reply(_Reply(501, "5.1.3", f"Bad recipient address: {e}"))
                return
        recipient = normalizeAddress(recipient)
        if parameters.notify is not None or parameters.orcpt is not None:
            self._envelope.recipients[recipient] = parameters
        self._rcptAttempted = True
        if recipient in self._recipients:
            self._reply(_Reply(250, "2.1.5", "Recipient OK"))
            return
        if len(self._recipients) >= self.factory.maxRecipients:
            self._reply(_Reply(452, "4.5.3", "Too many recipients"))
            return

        def accepted(result: object) -> _Reply:
            if recipient not in self._recipients:
                self._recipients.append(recipient)
            if isinstance(result, SMTPReply) and 200 <= result.code < 300:
                # The delivery accepts with its own words, such as
                # "251 2.1.5 User not local; will forward".
                return _Reply(result.code, result.enhanced, result.text)
            return _Reply(250, "2.1.5", "Recipient OK")

        self._await(self.factory.delivery.validateRecipient, (self.session, recipient), accepted)

    def _checkRcptParameters(self, text: str, parameters: RecipientParameters) -> Optional[_Reply]:
        """
        Check the ESMTP parameters of C{RCPT} (RFC 3461 C{NOTIFY} and
        C{ORCPT}) and record them in C{parameters}; the refusal, or
        L{None}.
        """
        try:
            params = parseParameters(text)
        except ValueError as e:
            return _Reply(501, "5.5.4", str(e))
        if params and not self.session.esmtp:
            return _Reply(555, "5.5.4", "Parameters not allowed after HELO")
        for key, value in params.items():
            if key == "NOTIFY":
                try:
                    parameters.notify = parseNotify(value)
                except ValueError as e:
                    return _Reply(501, "5.5.4", str(e))
            elif key == "ORCPT":
                if value is None or len(value) > 500:
                    return _Reply(501, "5.5.4", "Syntax error in ORCPT parameter")
                try:
                    parameters.orcpt = parseOrcpt(value)
                except ValueError:
                    return _Reply(501, "5.5.4", "ORCPT is addr-type;xtext")
            else:
                return _Reply(555, "5.5.4", f"Unsupported parameter {key}")
        return None

    def do_DATA(self, arg: str) -> None:
        """
        C{DATA}: receive the message into a temporary file.
        """
        if not self._inTransaction:
            self._reply(_Reply(503, "5.5.1", "Need MAIL command"))
            return
        if not self._recipients:
            if self._rcptAttempted:
                # RFC 2920 3.1: a pipelined DATA after refused recipients.
                self._reply(_Reply(554, "5.5.1", "No valid recipients"))
            else:
                self._reply(_Reply(503, "5.5.1", "Need RCPT command"))
            return
        if arg:
            self._reply(_Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if self._bdat:
            # RFC 3030 2: no DATA in a transaction that used BDAT.
            self._reply(_Reply(503, "5.5.1", "DATA not allowed after BDAT in a transaction"))
            return
        self._messageId = secrets.token_hex(8).upper()
        self._file = _Spool(self.factory, self._envelope.size)
        self._file.write(self._receivedHeader())
        self._size = 0
        self._prevCRLF = True  # the DATA line ended with CRLF
        self._bareCRLF = False
        self._nul = False
        self._longLine = False
        self._tooBig = False
        self._ioError = False
        self._mode = "data"
        self._reply(_Reply(354, None, "End data with <CR><LF>.<CR><LF>"))

    def do_RSET(self, arg: str) -> None:
        """
        C{RSET}: abandon the transaction.
        """
        if arg:
            self._reply(_Reply(501, "5.5.4", "Syntax: RSET"))
            return
        self._resetTransaction()
        self._reply(_Reply(250, "2.0.0", "Ok"))

    def do_NOOP(self, arg: str) -> None:
        """
        C{NOOP [text]}: do nothing.
        """
        # RFC 5321 4.1.1.9: a parameter may be given and is ignored.
        self._reply(_Reply(250, "2.0.0", "Ok"))

    def do_QUIT(self, arg: str) -> None:
        """
        C{QUIT}: say goodbye and close.
        """
        if arg:
            self._reply(_Reply(501, "5.5.4", "Syntax: QUIT"))
            return
        self._reply(_Reply(221, "2.0.0", "Bye"))
        self._close()

    def do_HELP(self, arg: str) -> None:
        """
        C{HELP [topic]}: list the verbs.
        """
        verbs = "HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN"
        if self._startTLSAvailable():
            verbs += " STARTTLS"
        if self._knownMechanisms():
            verbs += " AUTH"
        self._reply(_Reply(
            214,
            "2.0.0",
            "Commands supported:",
            verbs,
            "See RFC 5321",
        ))

    def do_VRFY(self, arg: str) -> None:
        """
        C{VRFY string}: never says whether a user exists.
        """
        self._cannotVerify("VRFY", arg)

    def do_EXPN(self, arg: str) -> None:
        """
        C{EXPN string}: never expands a list.
        """
        self._cannotVerify("EXPN", arg)

    def _cannotVerify(self, verb: str, arg: str) -> None:
        # Never disclose whether a user or list exists (RFC 5321 3.5.3, 7.3).
        if not arg:
            self._reply(_Reply(501, "5.5.4", f"Syntax: {verb} address"))
            return
        self._reply(_Reply(252, "2.5.0", "Cannot verify, but will accept message and attempt delivery"))

    #: Verbs answered with 502 (known to RFC 5321 or its extensions, not
    #: offered here); a subclass that defines C{do_<VERB>} takes precedence.
    notImplemented = frozenset(
        ["TURN", "SEND", "SOML", "SAML", "ETRN", "ATRN", "STARTTLS", "AUTH"]
    )

    def do_BDAT(self, arg: str) -> None:
        """
        C{BDAT chunk-size [LAST]} (RFC 3030): the next C{chunk-size} octets
        are message data, taken exactly, whatever they contain.  They are
        always read, even when the command is refused, so that they are
        never taken for commands.
        """
        parts = arg.split(" ")
        if (
            not 1 <= len(parts) <= 2
            or not parts[0].isascii()
            or not parts[0].isdigit()
            or len(parts[0]) > 20
            or (len(parts) == 2 and parts[1].upper() != "LAST")
        ):
            self._reply(_Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"))
            return
        refusal: Optional[_Reply] = None
        if not self._inTransaction:
            refusal = _Reply(503, "5.5.1", "Need MAIL command")
        elif not self._recipients:
            refusal = _Reply(503, "5.5.1", "Need RCPT command")
        elif not self._bdat:
            self._bdat = True
            self._messageId = secrets.token_hex(8).upper()
            self._file = _Spool(self.factory, self._envelope.size)
            self._file.write(self._receivedHeader())
            self._size = 0
            self._tooBig = False
            self._ioError = False
            self._nul = False
        self._bdatRemaining = int(parts[0])
        self._bdatLast = len(parts) == 2
        self._bdatRefusal = refusal
        self._mode = "bdat"

    def _bdatStep(self) -> bool:
        """
        Consume the octets of the current C{BDAT} chunk from the buffer;
        answer once the chunk is complete.

        @return: whether anything was consumed or finished.
        """
        buf = self._buffer
        take = min(self._bdatRemaining, len(buf))
        if take:
            chunk = bytes(buf[:take])
            del buf[:take]
            self._bdatRemaining -= take
            if self._bdatRefusal is None:
                self._bdatWrite(chunk)
        if self._bdatRemaining:
            return False
        self._mode = "command"
        self._bdatEnd()
        return True

    def _bdatWrite(self, chunk: bytes) -> None:
        """
        Spool part of a chunk, unless the message has already failed.
        """
        self._size += len(chunk)
        if self._file is None:
            return
        if self._size > self.factory.maxMessageSize:
            self._tooBig = True
            self._closeFile()
            return
        if b"\x00" in chunk:
            # BINARYMIME is not offered, so no NUL in a chunk either.
            self._nul = True
            self._closeFile()
            return
        try:
            self._file.write(chunk)
        except OSError:
            self._log.failure("SMTP could not spool message data from {peer}", peer=self.session.peerHost)
            self._ioError = True
            self._closeFile()

    def _bdatEnd(self) -> None:
        """
        A chunk was read whole: refuse it, acknowledge it, or (C{LAST})
        hand the message over.  A chunk refused for the message's sake
        (size, spool trouble) ends the transaction.
        """
        if self._bdatRefusal is not None:
            refusal, self._bdatRefusal = self._bdatRefusal, None
            self._reply(refusal)
            return
        if self._tooBig:
            self._resetTransaction()
            self._reply(_Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
            return
        if self._ioError:
            self._resetTransaction()
            self._reply(_Reply(451, "4.3.0", "Temporary failure, please try again later"))
            return
        if self._nul:
            self._resetTransaction()
            self._reply(_Reply(550, "5.6.0", "Message contains a NUL character"))
            return
        if not self._bdatLast:
            self._reply(_Reply(250, "2.0.0", f"{self._size} octets received"))
            return
        self._handOver()

    # Message data.

    def _receivedHeader(self) -> bytes:
        """
        The trace header (RFC 5321 4.4, with RFC 3848 protocol names) put
        before the message, folded over several lines.
        """
        session = self.session
        proto = "ESMTP" if session.esmtp else "SMTP"
        if session.esmtp:
            suffix = ("S" if session.tls else "") + ("A" if session.authenticated else "")
            proto += suffix
        when = self.factory.dateHeader()
        lines = [
            f"Received: from {session.helo} ({_addressLiteral(session.peerHost)})",
            f"\tby {self.factory.hostname} (mailplat) with {proto} id {self._messageId}",
        ]
        if len(self._recipients) == 1:
            lines.append(f"\tfor <{self._recipients[0]}>;")
        else:
            lines[-1] += ";"
        lines.append(f"\t{when}")
        return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")

    def _dataStep(self) -> bool:
        """
        Consume buffered message data: complete lines are checked,
        dot-unstuffed and written to the temporary file; a partial last line
        waits for more (at most one text line's worth); the end of data
        hands the message over.

        @return: whether anything was consumed.
        """
        buf = self._buffer
        if self._skipLine:
            # Discarding the rest of an overlong line, up to its LF.
            lf = buf.find(b"\n")
            if lf == -1:
                if buf:
                    self._skipLastCR = buf[-1] == 0x0D
                    del buf[:]
                return False
            self._prevCRLF = buf[lf - 1] == 0x0D if lf > 0 else self._skipLastCR
            del buf[: lf + 1]
            self._skipLine = False
            return True
        if self._prevCRLF and buf[:3] == _DOT_LINE:
            del buf[:3]
            self._endOfData()
            return True
        end = buf.find(_END_OF_DATA)
        if end != -1:
            # (Through a memoryview: one copy, not two.)
            self._body(bytes(memoryview(buf)[: end + 2]))
            del buf[: end + 5]
            self._endOfData()
            return True
        lf = buf.rfind(b"\n")
        if lf != -1:
            self._body(bytes(memoryview(buf)[: lf + 1]))
            del buf[: lf + 1]
        # What is left is the start of a line.  Once it cannot fit in a text
        # line (even after removing a stuffed dot) stop keeping it.
        if len(buf) > MAX_TEXT_LINE + 1:
            self._longLine = True
            self._closeFile()
            self._skipLastCR = buf[-1] == 0x0D
            self._skipLine = True
            del buf[:]
        return False

    def _body(self, part: bytes) -> None:
        """
        Take complete lines of message data (starting at a line's start,
        ending with LF) still in transparency (dot-stuffed) form.
        """
        if not part:
            return
        self._prevCRLF = part.endswith(_CRLF)
        if self._file is None:
            return  # already refused; keep reading to the end
        # splitlines breaks at CR LF, and at a bare CR or LF: with c CR LF
        # pairs, r bare CRs and l bare LFs there are c + r + l lines (the
        # part ends with a line break), and the line breaks take 2c + r + l
        # octets, which is twice the lines only when r = l = 0.  (One split
        # and the lengths, which the longest line needs anyway: counting
        # the CRs and the LFs costs more.)
        lines = part.splitlines()
        lengths = list(map(len, lines))
        if len(part) - sum(lengths) != 2 * len(lines):
            self._bareCRLF = True
            self._closeFile()
            return
        if b"\x00" in part:
            # No NUL in a message without BINARYMIME (RFC 5322 2.2, RFC
            # 6152 2); refused at the end of data, as a bare CR or LF is.
            self._nul = True
            self._closeFile()
            return
        if max(lengths) >= MAX_TEXT_LINE - 1:
            # Some line may be too long; measure exactly, without the
            # stuffed dot (RFC 5321 4.5.3.1.6) but with the CR LF.
            for line in lines:
                if len(line) + 2 - line.startswith(b".") > MAX_TEXT_LINE:
                    self._longLine = True
                    self._closeFile()
                    return
        if b"." in part:
            if part[:1] == b".":
                part = part[1:]
            part = part.replace(b"\n.", b"\n")
        self._size += len(part)
        if self._size > self.factory.maxMessageSize:
            self._tooBig = True
            self._closeFile()
            return
        try:
            self._file.write(part)
        except OSError:
            self._log.failure("SMTP could not spool message data from {peer}", peer=self.session.peerHost)
            self._ioError = True
            self._closeFile()

    def _endOfData(self) -> None:
        """
        The client sent CRLF "." CRLF: refuse a bad message, or hand a good
        one to the delivery.
        """
        self._mode = "command"
        if self._tooBig:
            refusal = _Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        elif self._longLine:
            # RFC 5321 4.5.3.1.6 limits a text line to 1000 octets with its
            # CRLF.  4.5.3.1 suggests "500 Line too long", but 500 says a
            # command was not understood, and 4.3.2 allows only 250, 450,
            # 451, 452, 550, 552 and 554 after the end of data.  The data
            # was read correctly to its end; the message itself is refused
            # for good: 554 (transaction failed) with RFC 3463's X.6.0
            # (a problem with the message's content).
            refusal = _Reply(554, "5.6.0", "Message has a line longer than 998 characters")
        elif self._bareCRLF:
            refusal = _Reply(550, "5.6.0", "Message contains bare CR or LF")
        elif self._nul:
            refusal = _Reply(550, "5.6.0", "Message contains a NUL character")
        elif self._ioError:
            refusal = _Reply(451, "4.3.0", "Temporary failure, please try again later")
        else:
            refusal = None
        if refusal is not None:
            self._resetTransaction()
            self._reply(refusal)
            return
        self._handOver()

    def _handOver(self) -> None:
        """
        The whole message is spooled: hand it to the delivery, and reply
        with its answer.
        """
        # The file now belongs to the delivery call until it answers; it is
        # closed then, even if the client has gone meanwhile.
        message = self._file
        assert message is not None
        self._file = None
        message.seek(0)
        messageId = self._messageId
        sender = self._sender
        recipients = list(self._recipients)
        self.session.transaction = self._envelope

        def delivered(result: object) -> _Reply:
            self._errors = 0
            return _Reply(250, "2.0.0", f"Ok: queued as {messageId}")

        def done() -> None:
            message.close()
            self._resetTransaction()

        self._await(
            self.factory.delivery.deliver,
            (self.session, sender, recipients, message),
            delivered,
            onDone=done,
        )


class SMTPFactory(protocol.ServerFactory):
    """
    Makes L{SMTPServer} protocols for one listener: inbound (MX) SMTP or
    submission.

    @ivar delivery: the L{IDelivery} every decision is asked of.
    @ivar hostname: our host name for the greeting and C{Received} headers.
    @ivar maxMessageSize: largest message accepted, in octets of message
        data (advertised with SIZE).
    @ivar timeout: idle timeout in seconds.
    @ivar maxRecipients: most recipients in one transaction.
    @ivar clock: the L{IReactorTime} for timeouts and dates.
    @ivar maxErrors: after this many 5xx replies without a delivered message
        the connection is closed with 421.
    @ivar portal: the cred L{Portal} for C{AUTH}, or L{None} (no AUTH).
    @ivar contextFactory: the server TLS context source for C{STARTTLS}
        (L{mailplat.tls.ServerTLSContext}), or L{None} (no STARTTLS).
    @ivar role: C{"mx"}, C{"submission"} or C{"smtps"} (see the module
        docstring).
    @ivar allowPlaintext: accept passwords without TLS from any address,
        not only from loopback.
    @ivar spoolMemory: octets of message data all the sessions together
        may keep in memory beyond L{SPOOL_THRESHOLD} each (a message takes
        at most L{SPOOL_MEMORY_MAX} of it, while it is being received and
        delivered); past it, message data over L{SPOOL_THRESHOLD} goes to
        a temporary file.
    """

    protocol = SMTPServer  # type: ignore[assignment]
    maxErrors = _ERROR_LIMIT

    def __init__(
        self,
        delivery: IDelivery,
        hostname: str,
        maxMessageSize: int = 50 * 1024 * 1024,
        timeout: float = 300.0,
        maxRecipients: int = 1000,
        clock: Optional[IReactorTime] = None,
        portal: Optional[LoginPortal] = None,
        contextFactory: Optional[Any] = None,
        role: str = "mx",
        allowPlaintext: bool = False,
        spoolMemory: int = 64 * 1024 * 1024,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        if role not in ROLES:
            raise ValueError(f"unknown SMTP listener role {role!r} (known: {', '.join(ROLES)})")
        self.portal = portal
        self.contextFactory = contextFactory
        self.role = role
        self.allowPlaintext = allowPlaintext
        self.delivery = delivery
        self.hostname = hostname
        self.maxMessageSize = maxMessageSize
        self.timeout = timeout
        self.maxRecipients = maxRecipients
        self.clock = clock
        self.spoolMemory = spoolMemory
        self._spoolLent = 0
        self._date: Tuple[int, str] = (-1, "")

    def lendSpoolMemory(self, wanted: Optional[int] = None) -> int:
        """
        Lend a message's spool room in memory from L{spoolMemory}: C{wanted}
        octets (the message's declared size), or L{SPOOL_MEMORY_MAX} when it
        is not known, or what is left of the budget if that is less; 0 when
        that is no more than L{SPOOL_THRESHOLD} (always in memory) or the
        message is declared larger than L{SPOOL_MEMORY_MAX} (it goes to
        disk).  Given back with L{returnSpoolMemory}.
        """
        if wanted is not None and wanted > SPOOL_MEMORY_MAX:
            return 0
        lent = min(SPOOL_MEMORY_MAX if wanted is None else wanted, self.spoolMemory - self._spoolLent)
        if lent <= SPOOL_THRESHOLD:
            return 0
        self._spoolLent += lent
        return lent

    def returnSpoolMemory(self, lent: int) -> None:
        """
        Give back what L{lendSpoolMemory} lent.
        """
        self._spoolLent -= lent

    def dateHeader(self) -> str:
        """
        The time now as an RFC 5322 date (for C{Received} headers), made
        once per second.
        """
        now = int(self.clock.seconds())
        if now != self._date[0]:
            self._date = (now, email.utils.format_datetime(datetime.fromtimestamp(now, timezone.utc)))
        return self._date[1]
