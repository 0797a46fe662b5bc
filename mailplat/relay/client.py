"""
The SMTP client protocol the relay speaks to other mail servers: reading
(multi-line) replies, sending commands, and sending message data with
dot-stuffing (RFC 5321 4.5.2).  The conversation itself (EHLO, STARTTLS,
AUTH, MAIL, RCPT, DATA) is driven by L{mailplat.relay.Relay}.
"""

from typing import BinaryIO, Callable, Dict, List, Optional

from twisted.internet import defer, error, protocol
from twisted.protocols.basic import FileSender
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailplat import netutil

#: Longest reply line accepted (RFC 5321 4.5.3.1.5 says 512; be lenient).
MAX_REPLY_LINE = 4096
#: Most lines in one reply.
MAX_REPLY_LINES = 100


class Reply:
    """
    One SMTP reply.

    @ivar code: the three-digit code.
    @ivar lines: the text of each line, without code and separator.
    """

    def __init__(self, code: int, lines: List[str]) -> None:
        self.code = code
        self.lines = lines

    @property
    def text(self) -> str:
        """
        The reply on one line, as recorded in the queue and in DSNs:
        C{"550 5.1.1 No such user"}.
        """
        return f"{self.code} " + " ".join(line.strip() for line in self.lines if line.strip())

    def extensions(self) -> Dict[str, str]:
        """
        For an EHLO reply: each keyword (upper-case) with its parameters.
        """
        result: Dict[str, str] = {}
        for line in self.lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            if keyword:
                result[keyword.upper()] = params
        return result

    def __repr__(self) -> str:
        return f"<Reply {self.text!r}>"


class ProtocolError(Exception):
    """
    The server broke the protocol (malformed or overlong reply).
    """


class SMTPClientProtocol(protocol.Protocol, TimeoutMixin):
    """
    One connection to a remote SMTP server.

    Replies are handed out in order to callers of L{readReply} (or of
    L{command}); the greeting is the first.  On a protocol error, a
    timeout or a lost connection every waiting caller gets a failure.

    @ivar timeout: seconds without any reply before the connection is
        dropped (RFC 5321 4.5.3.2 suggests 5 minutes for most commands).
    @ivar callLater: the clock's C{callLater}, used for the timeout.
    """

    transport: netutil.IConnectionTransport

    def __init__(self, callLater: Callable, timeout: float = 300.0) -> None:
        self.callLater = callLater  # type: ignore[method-assign]
        self.timeout = timeout
        self._buffer = bytearray()
        self._lines: List[str] = []
        self._code: Optional[int] = None
        self._replies: List[Reply] = []
        self._waiting: List[defer.Deferred] = []
        self._lost: Optional[Failure] = None
        #: The server's EHLO keywords, once known.
        self.extensions: Dict[str, str] = {}

    def connectionMade(self) -> None:
        """
        Turn on C{TCP_NODELAY} and start the reply timer.
        """
        netutil.setNoDelay(self.transport)
        self.setTimeout(self.timeout)

    def timeoutConnection(self) -> None:
        """
        No reply for too long: give up on the connection.
        """
        self._fail(Failure(error.TimeoutError("no reply from the server")))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """
        Fail every waiting caller.
        """
        self.setTimeout(None)
        self._fail(reason)

    def _fail(self, reason: Failure) -> None:
        if self._lost is None:
            self._lost = reason
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(self._lost)

    def dataReceived(self, data: bytes) -> None:
        """
        Split the input into reply lines and complete replies.
        """
        self.resetTimeout()
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end == -1:
                if len(self._buffer) > MAX_REPLY_LINE:
                    self._protocolError("reply line too long")
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r").decode("utf-8", "replace")
            del self._buffer[: end + 1]
            if not self._line(line):
                return

    def _line(self, line: str) -> bool:
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
            self._protocolError(f"malformed reply line {line[:80]!r}")
            return False
        code = int(line[:3])
        if self._code is not None and code != self._code:
            self._protocolError("reply code changed inside a multi-line reply")
            return False
        self._code = code
        self._lines.append(line[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            self._protocolError("reply has too many lines")
            return False
        if len(line) == 3 or line[3] == " ":
            reply = Reply(code, self._lines)
            self._code, self._lines = None, []
            if self._waiting:
                self._waiting.pop(0).callback(reply)
            else:
                self._replies.append(reply)
        return True

    def _protocolError(self, why: str) -> None:
        self._fail(Failure(ProtocolError(why)))
        self.transport.abortConnection()

    def readReply(self) -> "defer.Deferred[Reply]":
        """
        The next reply from the server.
        """
        if self._replies:
            return defer.succeed(self._replies.pop(0))
        if self._lost is not None:
            return defer.fail(self._lost)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def command(self, line: str) -> "defer.Deferred[Reply]":
        """
        Send one command line (CRLF is added) and wait for its reply.
        """
        if self._lost is None:
            self.transport.write(line.encode("utf-8") + b"\r\n")
        return self.readReply()

    def sendMessage(self, message: BinaryIO) -> "defer.Deferred[Reply]":
        """
        Send message data after a C{354}, streamed from C{message} with a
        producer (never all in memory): every line dot-stuffed, a final
        CRLF added when missing, then CRLF "." CRLF; wait for the reply.

        @param message: the wire form (CRLF lines), as the queue keeps it.
        """
        reply = self.readReply()
        if self._lost is not None:
            return reply
        message.seek(0)
        atLineStart = [True]

        def stuff(chunk: bytes) -> bytes:
            # Runs once per chunk sent: a slow but moving upload is not idle.
            self.resetTimeout()
            out = chunk.replace(b"\n.", b"\n..")
            if atLineStart[0] and chunk.startswith(b"."):
                out = b"." + out
            if chunk:
                atLineStart[0] = chunk.endswith(b"\n")
            return out

        def sent(_: object) -> None:
            if self._lost is None:
                self.transport.write(b".\r\n" if atLineStart[0] else b"\r\n.\r\n")

        def failed(reason: Failure) -> None:
            if self._lost is None:
                self._fail(reason)
                self.transport.abortConnection()

        FileSender().beginFileTransfer(message, self.transport, stuff).addCallbacks(sent, failed)
        return reply

    def close(self) -> None:
        """
        Close the connection (after C{QUIT}, or at once when broken).
        """
        self.setTimeout(None)
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()
