"""
Spam-filter hooks: ask an rspamd (HTTP C{/checkv2}) or a SpamAssassin
C{spamd} (the SPAMC/SPAMD protocol over TCP) about each message, and turn
the answer into headers and an action.

Every scanned message gets C{X-Spam-Status} (C{Yes, score=7.1
required=5.0 tests=A,B} as SpamAssassin writes it), C{X-Spam-Score} and,
when it is spam, C{X-Spam-Flag: YES}.  The action:

  - score at or above C{rejectScore}: C{550 5.7.1} (with no
    C{rejectScore}, rspamd's own C{reject} action rejects; spamd never
    does);
  - score at or above C{addHeaderScore}: tagged as spam (with no
    C{addHeaderScore}, rspamd's C{add header}/C{rewrite subject} action or
    spamd's own verdict decides);
  - otherwise tagged as not spam.

A scanner that cannot be reached (or answers nonsense, or not within
C{timeout}) gives, per C{onFailure}, C{"accept"} (the default: the message
gets C{X-Spam-Status: Unscanned (...)}) or C{"tempfail"} (C{451 4.7.1}).
Mail from authenticated sessions is not scanned unless C{scanAuthenticated}.
"""

import io
import json
from typing import Any, BinaryIO, Generator, List, Optional

from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from mailplat.delivery.policy import IPolicy, Verdict, clientAddress, isAuthenticated, readMessage
from mailplat.netutil import IConnectionTransport

_log = Logger()


class ScannerError(Exception):
    """
    The scanner could not be asked, or its answer made no sense.
    """


class ScanResult:
    """
    A scanner's answer.

    @ivar score: the message's score.
    @ivar required: the scanner's own spam threshold.
    @ivar isSpam: the scanner's own verdict.
    @ivar symbols: the rules that fired.
    @ivar action: rspamd's recommended action (C{"no action"},
        C{"add header"}, C{"rewrite subject"}, C{"greylist"},
        C{"soft reject"}, C{"reject"}), or L{None} for spamd.
    """

    def __init__(self, score: float, required: float, isSpam: bool, symbols: List[str], action: Optional[str] = None) -> None:
        self.score = score
        self.required = required
        self.isSpam = isSpam
        self.symbols = symbols
        self.action = action


def _clean(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


class _ScannerPolicy:
    """
    What both scanners share: thresholds, headers, failure handling.

    @ivar name: the scanner's name, for headers and logs.
    """

    name = "scanner"

    def __init__(
        self,
        reactor: IReactorTime,
        rejectScore: Optional[float] = None,
        addHeaderScore: Optional[float] = None,
        onFailure: str = "accept",
        timeout: float = 30.0,
        maxSize: int = 20 * 1024 * 1024,
        scanAuthenticated: bool = False,
    ) -> None:
        if onFailure not in ("accept", "tempfail"):
            raise ValueError(f"on failure: 'accept' or 'tempfail', not {onFailure!r}")
        self.reactor = reactor
        self.rejectScore = rejectScore
        self.addHeaderScore = addHeaderScore
        self.onFailure = onFailure
        self.timeout = timeout
        self.maxSize = maxSize
        self.scanAuthenticated = scanAuthenticated

    def scan(self, session: object, sender: Optional[str], recipients: List[str], data: bytes) -> "defer.Deferred[ScanResult]":
        """
        Ask the scanner; fails with L{ScannerError}.
        """
        raise NotImplementedError()

    def _unscanned(self, why: str) -> Verdict:
        """
        The verdict when the message could not be scanned.
        """
        if self.onFailure == "tempfail":
            return Verdict.reject(451, "4.7.1", f"Spam scanner unavailable, try again later ({self.name})")
        return Verdict.tag(f"X-Spam-Status: Unscanned ({_clean(self.name)}: {_clean(why)})\r\n".encode("ascii"))

    def verdict(self, result: ScanResult) -> Verdict:
        """
        Headers and action for a scan result.
        """
        if self.rejectScore is not None:
            reject = result.score >= self.rejectScore
        else:
            reject = result.action == "reject"
        if self.addHeaderScore is not None:
            spam = result.score >= self.addHeaderScore
        elif result.action is not None:
            spam = result.action in ("add header", "rewrite subject", "reject", "soft reject")
        else:
            spam = result.isSpam
        if reject:
            return Verdict.reject(550, "5.7.1", f"Message rejected as spam (score {result.score:.1f})")
        if result.action == "soft reject" and self.rejectScore is None:
            return Verdict.reject(451, "4.7.1", "Message deferred by the spam filter, try again later")
        required = self.addHeaderScore if self.addHeaderScore is not None else result.required
        tests = ",".join(_clean(s) for s in sorted(result.symbols)) or "none"
        status = f"X-Spam-Status: {'Yes' if spam else 'No'}, score={result.score:.1f} required={required:.1f}\r\n\ttests={tests}\r\n"
        headers = [status.encode("ascii"), f"X-Spam-Score: {result.score:.1f}\r\n".encode("ascii")]
        if spam:
            headers.append(b"X-Spam-Flag: YES\r\n")
        return Verdict.tag(*headers)

    @defer.inlineCallbacks
    def checkMessage(
        self, session: object, sender: Optional[str], recipients: List[str], message: BinaryIO
    ) -> Generator["defer.Deferred[Any]", Any, Verdict]:
        """
        See L{IPolicy.checkMessage}.
        """
        if isAuthenticated(session) and not self.scanAuthenticated:
            return Verdict.accept()
        data = readMessage(message)
        if len(data) > self.maxSize:
            return Verdict.tag(f"X-Spam-Status: Unscanned (larger than {self.maxSize} octets)\r\n".encode("ascii"))
        d = self.scan(session, sender, recipients, data)
        d.addTimeout(self.timeout, self.reactor)
        try:
            result = yield d
        except Exception as e:
            why = str(e) if isinstance(e, ScannerError) else e.__class__.__name__
            _log.warn("{scanner} did not scan a message: {why}", scanner=self.name, why=why)
            return self._unscanned(why)
        return self.verdict(result)


@implementer(IPolicy)
class RspamdPolicy(_ScannerPolicy):
    """
    Asks rspamd (its normal worker's HTTP protocol, C{POST /checkv2}).

    @ivar url: the worker's base URL (C{http://127.0.0.1:11333}).
    """

    name = "rspamd"

    def __init__(self, url: str, reactor: Any, agent: Optional[Any] = None, password: Optional[str] = None, **kwargs: Any) -> None:
        _ScannerPolicy.__init__(self, reactor, **kwargs)
        url = url.rstrip("/")
        if not url.endswith("/checkv2"):
            url += "/checkv2"
        self.url = url.encode("ascii")
        self.password = password
        self.agent = agent if agent is not None else Agent(reactor, connectTimeout=self.timeout, pool=HTTPConnectionPool(reactor, persistent=False))

    @defer.inlineCallbacks
    def scan(
        self, session: object, sender: Optional[str], recipients: List[str], data: bytes
    ) -> Generator["defer.Deferred[Any]", Any, ScanResult]:
        """
        Post the message with its envelope in request headers.
        """
        headers = Headers({b"Content-Type": [b"message/rfc822"]})
        ip = clientAddress(session)
        if ip:
            headers.setRawHeaders(b"IP", [ip.encode("ascii", "replace")])
        helo = getattr(session, "helo", None)
        if helo:
            headers.setRawHeaders(b"Helo", [_clean(helo).encode("ascii")])
        hostname = getattr(session, "hostname", None)
        if hostname:
            headers.setRawHeaders(b"MTA-Name", [_clean(hostname).encode("ascii")])
        headers.setRawHeaders(b"From", [_clean(sender or "").encode("ascii")])
        if recipients:
            headers.setRawHeaders(b"Rcpt", [_clean(r).encode("ascii") for r in recipients])
        login = getattr(session, "authenticated", None)
        if login:
            headers.setRawHeaders(b"User", [_clean(login).encode("ascii")])
        if self.password:
            headers.setRawHeaders(b"Password", [self.password.encode("utf-8")])
        try:
            response = yield self.agent.request(b"POST", self.url, headers, FileBodyProducer(io.BytesIO(data)))
            body = yield readBody(response)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise ScannerError(f"{e.__class__.__name__}") from None
        if response.code != 200:
            raise ScannerError(f"HTTP {response.code}")
        try:
            answer = json.loads(body)
            score = float(answer["score"])
            required = float(answer.get("required_score", 15.0))
            action = str(answer.get("action", "no action"))
            symbols = [str(s) for s in (answer.get("symbols") or {})]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ScannerError("unreadable answer") from None
        return ScanResult(score, required, action in ("add header", "rewrite subject", "reject"), symbols, action)


class SpamdClientProtocol(protocol.Protocol):
    """
    One SPAMC request: send the command, headers and message, collect the
    answer until spamd closes the connection.

    @ivar done: fires with the raw answer (C{bytes}).
    """

    transport: IConnectionTransport

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = bytearray()
        self.done: "defer.Deferred[bytes]" = defer.Deferred(lambda d: self.transport.abortConnection())

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer.extend(data)
        if len(self.buffer) > 1024 * 1024:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.buffer))


def parseSpamdReply(raw: bytes) -> ScanResult:
    """
    Parse a C{SPAMD/1.x} answer to C{SYMBOLS} or C{CHECK}.

    @raise ScannerError: for an error reply or one that does not parse.
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    lines = head.decode("latin-1").splitlines()
    if not lines:
        raise ScannerError("empty answer")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("SPAMD/"):
        raise ScannerError("not a spamd answer")
    if status[1] != "0":
        raise ScannerError(f"spamd error {' '.join(status[1:])}")
    spam = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "spam":
            spam = value
    if spam is None:
        raise ScannerError("no Spam header in the answer")
    try:
        flag, _, scores = spam.partition(";")
        score, _, required = scores.partition("/")
        result = ScanResult(float(score), float(required), flag.strip().lower() in ("true", "yes"), [])
    except ValueError:
        raise ScannerError(f"bad Spam header {spam.strip()!r}") from None
    result.symbols = [s.strip() for s in body.decode("latin-1").split(",") if s.strip()]
    return result


@implementer(IPolicy)
class SpamdPolicy(_ScannerPolicy):
    """
    Asks SpamAssassin's C{spamd} with C{SYMBOLS SPAMC/1.5}.

    @ivar host: spamd's host.
    @ivar port: spamd's port (783 normally).
    @ivar user: the C{User} to scan as, or L{None}.
    """

    name = "spamd"

    def __init__(self, host: str, port: int, reactor: Any, user: Optional[str] = None, **kwargs: Any) -> None:
        _ScannerPolicy.__init__(self, reactor, **kwargs)
        self.host = host
        self.port = port
        self.user = user

    @defer.inlineCallbacks
    def scan(
        self, session: object, sender: Optional[str], recipients: List[str], data: bytes
    ) -> Generator["defer.Deferred[Any]", Any, ScanResult]:
        """
        Connect, send the message, parse the answer.
        """
        request = b"SYMBOLS SPAMC/1.5\r\nContent-length: " + str(len(data)).encode("ascii") + b"\r\n"
        if self.user:
            request += b"User: " + _clean(self.user).encode("ascii") + b"\r\n"
        request += b"\r\n" + data
        endpoint = endpoints.HostnameEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
        client = SpamdClientProtocol(request)
        try:
            yield endpoints.connectProtocol(endpoint, client)
        except defer.CancelledError:
            raise
        except Exception as e:
            raise ScannerError(e.__class__.__name__) from None
        raw = yield client.done
        return parseSpamdReply(raw)
