"""
Hostile input against all three protocols, over real loopback sockets to a
L{LoopbackServer}: overlong lines, NUL and 8-bit octets, unterminated and
giant literals, commands in the wrong state, pipelining floods, a client
that trickles its bytes, many connections at once.  Each test shows that
the server answers with the protocol's error, that a new session works
afterwards, and that no file descriptor and no protocol object is left
behind.

Then an open-relay battery against the SMTP MX role: address forms that
have tricked mail servers into relaying (percent hack, bang paths, source
routes, quoted local parts with C{@}, IP literals, case and trailing-dot
variants) are neither accepted for a remote destination nor queued.
"""

import gc
import os
import re
import socket
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mailplat.imap.server import IMAPServer
from mailplat.limits import limitConnections, refusalLine
from mailplat.pop3.server import POP3Server
from mailplat.smtp.server import SMTPServer
from tests.e2e.server import LoopbackServer

PASSWORD = "correct horse battery"
ALICE = "alice@example.test"
HOSTNAME = "mail.example.test"

#: The protocol classes whose instances must all be gone after a test.
PROTOCOL_CLASSES: Sequence[Type[Any]] = (SMTPServer, POP3Server, IMAPServer)

#: How many reactor turns of 10 ms a clean-up may take at most.
SETTLE_TURNS = 500


def openFDs(keep: str = "") -> int:
    """
    How many file descriptors this process has open, leaving out those on
    files under C{keep}: state the server opens once and keeps open (the
    message index of an account, first opened by a delivery), which is
    not a leak.
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(os.path.join("/proc/self/fd", fd))
        except OSError:
            continue
        if not (keep and target.startswith(keep)):
            count += 1
    return count


def liveProtocols() -> int:
    """
    How many server protocol objects are alive.
    """
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, PROTOCOL_CLASSES))


def converse(port: int, chunks: Sequence[bytes], timeout: float = 20.0, halfClose: bool = False,
             until: Optional[bytes] = None) -> bytes:
    """
    Connect, send C{chunks} (from a second thread, so that a server that
    answers and hangs up early is still heard), and return everything the
    server said until it closed the connection (or until C{until} has
    been seen, when given, or C{timeout} passed without a word).  With
    C{halfClose} the client then shuts its sending side, which the server
    takes as the client leaving.  Blocking: run it in a thread.
    """
    received: List[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:

        def send() -> None:
            try:
                for chunk in chunks:
                    s.sendall(chunk)
                if halfClose:
                    s.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            for _ in range(1_000_000):
                more = s.recv(65536)
                if not more:
                    break
                received.append(more)
                if until is not None and until in b"".join(received):
                    break
        except OSError:
            pass
        sender.join(timeout)
    return b"".join(received)


def dialog(port: int, steps: Sequence[Any], timeout: float = 20.0) -> bytes:
    """
    Connect and go through C{steps}, each C{(data, wait)}: send C{data},
    then read until C{wait} has arrived (counted from the start of the
    session).  Then shut the sending side (the client leaves) and return
    everything the server said until it closed.  Blocking: run it in a
    thread.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            for data, wait in steps:
                s.sendall(data)
                for _ in range(100_000):
                    if wait is None or wait in received:
                        break
                    more = s.recv(65536)
                    if not more:
                        return received
                    received += more
            s.shutdown(socket.SHUT_WR)
            for _ in range(1_000_000):
                more = s.recv(65536)
                if not more:
                    break
                received += more
        except OSError:
            pass
    return received


class HostileMixin:
    """
    A running server with one user; every test ends with the server
    proven alive and clean.
    """

    server: LoopbackServer

    @defer.inlineCallbacks
    def setUp(self):
        self.dataDir = os.path.abspath(self.mktemp())
        self.server = LoopbackServer(self.dataDir, store="maildir").start()
        yield self.server.addUser(ALICE, PASSWORD)
        self.addCleanup(lambda: self.server.stop())
        self.keptOpen = os.path.join(self.dataDir, "index") + os.sep
        # One good session of each protocol first, so that whatever the
        # server opens once (the password file, the account) is open now.
        yield self.checkAlive()
        yield self.settled()
        self.baseFDs = openFDs(self.keptOpen)
        self.baseProtocols = liveProtocols()

    def inThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        """
        Run a blocking client in a thread.
        """
        return threads.deferToThread(f, *args, **kw)

    def checkAlive(self) -> defer.Deferred:
        """
        A fresh, correct session of each protocol works.
        """

        def sessions() -> None:
            smtp = converse(self.server.ports["smtp"], [b"EHLO client.test\r\n", b"QUIT\r\n"])
            assert re.search(rb"^250 ", smtp, re.M) and b"\r\n221 " in smtp, smtp
            pop3 = converse(self.server.ports["pop3"], [
                b"USER %s\r\nPASS %s\r\nSTAT\r\nQUIT\r\n" % (ALICE.encode(), PASSWORD.encode())])
            assert pop3.count(b"+OK") == 5 and b"signing off" in pop3, pop3
            imap = converse(self.server.ports["imap"], [
                b'a LOGIN %s "%s"\r\nb SELECT INBOX\r\nc LOGOUT\r\n' % (ALICE.encode(), PASSWORD.encode())])
            assert b"a OK" in imap and b"b OK" in imap and b"c OK" in imap, imap

        return self.inThread(sessions)

    @defer.inlineCallbacks
    def settled(self):
        """
        Wait, a bounded number of reactor turns, until the server holds
        no connection.
        """
        for _ in range(SETTLE_TURNS):
            if not any(w.protocols for w in self.server._wrappers):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        # Let the closed sockets' file descriptors go too.
        yield task.deferLater(reactor, 0, lambda: None)

    @defer.inlineCallbacks
    def assertClean(self):
        """
        The server answers new sessions, and once every connection has
        ended no descriptor and no protocol object remains.
        """
        yield self.checkAlive()
        yield self.settled()
        fds = openFDs(self.keptOpen)
        for _ in range(SETTLE_TURNS):
            if fds <= self.baseFDs:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
            fds = openFDs(self.keptOpen)
        self.assertLessEqual(fds, self.baseFDs, "file descriptors leaked")
        self.assertEqual([w.protocols for w in self.server._wrappers if w.protocols], [])
        self.assertLessEqual(liveProtocols(), self.baseProtocols, "protocol objects leaked")


class Trickle(Protocol):
    """
    A client that sends its bytes one per reactor turn, a bounded number
    of them, then waits for the server's answer to contain C{expect}.

    @ivar done: fires with everything received once C{expect} has been
        seen or the connection closed.
    """

    def __init__(self, data: bytes, expect: bytes) -> None:
        self.data = data
        self.expect = expect
        self.received = b""
        self.done: defer.Deferred = defer.Deferred()
        self._call: Any = None
        self.sent = 0

    def connectionMade(self) -> None:
        self._next()

    def _next(self) -> None:
        self._call = None
        if self.sent < len(self.data):
            self.transport.write(self.data[self.sent:self.sent + 1])
            self.sent += 1
            self._call = reactor.callLater(0, self._next)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.expect in self.received and not self.done.called:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._call is not None and self._call.active():
            self._call.cancel()
        if not self.done.called:
            self.done.callback(self.received)


def trickle(port: int, data: bytes, expect: bytes) -> defer.Deferred:
    """
    Connect and trickle C{data}; fires with what the server said.
    """
    protocol = Trickle(data, expect)
    d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    return d.addCallback(lambda _: protocol.done)


def manyConnections(port: int, count: int, greeting: bytes) -> List[bytes]:
    """
    Open C{count} connections at once, read each greeting, close them all.
    """
    sockets = []
    greetings = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=20))
        for s in sockets:
            data = b""
            for _ in range(100):
                more = s.recv(4096)
                data += more
                if not more or b"\r\n" in data:
                    break
            greetings.append(data)
    finally:
        for s in sockets:
            s.close()
    return greetings


class SMTPHostileTests(HostileMixin, TestCase):
    """
    Hostile input to the SMTP MX listener.
    """

    def smtp(self, *chunks: bytes, **kw: Any) -> defer.Deferred:
        return self.inThread(converse, self.server.ports["smtp"], list(chunks), **kw)

    @defer.inlineCallbacks
    def test_overlongLine(self):
        """
        A command line far over 512 octets is refused with 500 and the
        session goes on (or ends with 421); nothing of it runs.
        """
        reply = yield self.smtp(b"EHLO client.test\r\n", b"MAIL FROM:<" + b"a" * 200_000 + b"@x.test>\r\n",
                                b"NOOP\r\n", b"QUIT\r\n")
        self.assertRegex(reply, rb"\r\n500[ -]")
        self.assertNotIn(b"\r\n250 2.1.0", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_overlongNoNewline(self):
        """
        A megabyte with no line end is not buffered whole: the server
        answers 500 or closes, and stays up.
        """
        reply = yield self.smtp(b"EHLO client.test\r\n", b"X" * 1_000_000, b"\r\nQUIT\r\n")
        self.assertTrue(reply.startswith(b"220 "), reply[:200])
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_nulAnd8bit(self):
        """
        NUL and 8-bit octets in commands get 5xx replies, never 250.
        """
        reply = yield self.smtp(
            b"EHLO client.test\r\n",
            b"HELO a\x00b\r\n",
            b"MAIL FROM:<a\x00b@far.test>\r\n",
            b"MAIL FROM:<\xff\xfe@far.test>\r\n",
            b"NO\x00OP\r\n",
            b"\xc3\xa9HLO x\r\n",
            b"QUIT\r\n",
        )
        lines = reply.split(b"\r\n")
        # Greeting, the EHLO reply, five refusals, 221.
        answers = [line[:3] for line in lines if re.match(rb"^\d{3} ", line)]
        self.assertEqual(answers[0], b"220")
        self.assertEqual(answers[1], b"250")
        self.assertEqual(len(answers), 8, reply)
        for code in answers[2:7]:
            self.assertTrue(code.startswith(b"5"), reply)
        self.assertEqual(answers[7], b"221")
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_wrongState(self):
        """
        RCPT before MAIL, DATA before RCPT, MAIL before EHLO: 503 (or
        5xx), and no DATA mode.
        """
        reply = yield self.smtp(
            b"MAIL FROM:<a@far.test>\r\n",
            b"EHLO client.test\r\n",
            b"RCPT TO:<alice@example.test>\r\n",
            b"DATA\r\n",
            b"Subject: smuggled\r\n",
            b"QUIT\r\n",
        )
        self.assertNotIn(b"354", reply)
        self.assertRegex(reply, rb"\r\n503[ -]")
        self.assertIn(b"\r\n221 ", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_pipelineFlood(self):
        """
        Thousands of pipelined commands in one write are each answered (or
        the server cuts the client off with 421); it stays up.
        """
        count = 5000
        reply = yield self.smtp(b"EHLO client.test\r\n" + b"NOOP\r\n" * count + b"QUIT\r\n")
        answered = reply.count(b"\r\n250 2.0.0") + reply.count(b"\r\n250 ")
        self.assertTrue(reply.count(b"\r\n250 ") >= count or b"\r\n421 " in reply, answered)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_errorFlood(self):
        """
        Many bad commands end the session with 421 well before they are
        all answered.
        """
        reply = yield self.smtp(b"BOGUS\r\n" * 2000)
        self.assertIn(b"\r\n421 ", reply)
        self.assertLess(reply.count(b"\r\n500 "), 100)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_slowClient(self):
        """
        A client that sends one octet per reactor turn is served.
        """
        reply = yield trickle(self.server.ports["smtp"], b"EHLO slow.test\r\nNOOP\r\nQUIT\r\n", b"\r\n221 ")
        self.assertIn(b"\r\n221 ", reply)
        self.assertRegex(reply, rb"\r\n250[ -]")
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_manyConnections(self):
        """
        A hundred connections at once each get the greeting.
        """
        greetings = yield self.inThread(manyConnections, self.server.ports["smtp"], 100, b"220")
        self.assertEqual(len(greetings), 100)
        for greeting in greetings:
            self.assertTrue(greeting.startswith(b"220 ") or greeting.startswith(b"421 "), greeting)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_overlongDataLine(self):
        """
        An overlong line inside DATA does not leave DATA mode (the
        smuggling hole of twisted.mail): the text after it is never run as
        commands.
        """
        reply = yield self.smtp(
            b"EHLO client.test\r\nMAIL FROM:<a@far.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
            b"Subject: x\r\n\r\n" + b"y" * 100_000 + b"\r\nRSET\r\nMAIL FROM:<evil@far.test>\r\n.\r\nQUIT\r\n",
        )
        self.assertIn(b"354", reply)
        self.assertNotIn(b"250 2.1.0", reply.split(b"354", 1)[1])
        yield self.assertClean()


class POP3HostileTests(HostileMixin, TestCase):
    """
    Hostile input to the POP3 listener.
    """

    def pop3(self, *chunks: bytes, **kw: Any) -> defer.Deferred:
        return self.inThread(converse, self.server.ports["pop3"], list(chunks), **kw)

    def login(self) -> bytes:
        return b"USER %s\r\nPASS %s\r\n" % (ALICE.encode(), PASSWORD.encode())

    @defer.inlineCallbacks
    def test_overlongLine(self):
        """
        A line over 255 octets gets -ERR; the session goes on.
        """
        reply = yield self.pop3(b"USER " + b"a" * 100_000 + b"\r\n", b"CAPA\r\n", b"QUIT\r\n")
        lines = reply.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"+OK"))
        self.assertTrue(lines[1].startswith(b"-ERR"), reply[:300])
        self.assertIn(b"\r\n.\r\n", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_overlongNoNewline(self):
        """
        A megabyte without a line end is dropped as it comes.
        """
        reply = yield self.pop3(b"X" * 1_000_000, b"\r\nQUIT\r\n")
        self.assertTrue(reply.startswith(b"+OK"), reply[:200])
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_nulAnd8bit(self):
        """
        NUL and 8-bit octets get -ERR, and a user name with them does not
        log in.
        """
        reply = yield self.pop3(
            b"US\x00ER x\r\n",
            b"USER alice@example.test\x00\r\n",
            b"PASS " + PASSWORD.encode() + b"\r\n",
            b"\xff\xfe\r\n",
            b"USER \xff@example.test\r\n",
            b"PASS " + PASSWORD.encode() + b"\r\n",
            b"QUIT\r\n",
        )
        lines = [line for line in reply.split(b"\r\n") if line]
        self.assertEqual(len(lines), 8, reply)
        self.assertTrue(lines[0].startswith(b"+OK"))
        self.assertTrue(lines[1].startswith(b"-ERR"))
        self.assertTrue(lines[3].startswith(b"-ERR"), lines)
        self.assertTrue(lines[4].startswith(b"-ERR"), lines)
        self.assertTrue(lines[6].startswith(b"-ERR"), lines)
        self.assertTrue(lines[7].startswith(b"+OK"))
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_wrongState(self):
        """
        Transaction commands before login, PASS without USER, a second
        login once in: -ERR each.
        """
        reply = yield self.pop3(b"STAT\r\nRETR 1\r\nDELE 1\r\nPASS x\r\nLIST\r\nUIDL\r\n",
                                self.login(), b"USER x\r\nPASS y\r\nAUTH PLAIN\r\nQUIT\r\n")
        lines = [line for line in reply.split(b"\r\n") if line]
        self.assertEqual([line[:4] for line in lines[1:7]], [b"-ERR"] * 6, lines)
        self.assertEqual([line[:3] for line in lines[7:9]], [b"+OK"] * 2, lines)
        self.assertEqual([line[:4] for line in lines[9:12]], [b"-ERR"] * 3, lines)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_pipelineFlood(self):
        """
        Thousands of pipelined commands are answered in order, or the
        client is cut off; the server stays up.
        """
        count = 5000
        reply = yield self.pop3(self.login() + b"NOOP\r\n" * count + b"QUIT\r\n")
        self.assertTrue(reply.count(b"+OK") >= count + 3 or reply.count(b"-ERR") > 0, reply[-200:])
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_errorFlood(self):
        """
        Many bad commands end the session early.
        """
        reply = yield self.pop3(b"BOGUS\r\n" * 2000)
        self.assertLess(reply.count(b"-ERR"), 100)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_slowClient(self):
        """
        A client trickling one octet per reactor turn is served.
        """
        reply = yield trickle(self.server.ports["pop3"], self.login() + b"STAT\r\nQUIT\r\n", b"+OK", )
        self.assertTrue(reply.startswith(b"+OK"))
        reply = yield trickle(self.server.ports["pop3"], self.login() + b"STAT\r\nQUIT\r\n", b"\r\n+OK 0 0\r\n+OK")
        self.assertEqual(reply.count(b"+OK"), 5, reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_manyConnections(self):
        """
        A hundred connections at once each get the greeting.
        """
        greetings = yield self.inThread(manyConnections, self.server.ports["pop3"], 100, b"+OK")
        self.assertEqual(len(greetings), 100)
        for greeting in greetings:
            self.assertTrue(greeting.startswith(b"+OK") or greeting.startswith(b"-ERR"), greeting)
        yield self.assertClean()


class IMAPHostileTests(HostileMixin, TestCase):
    """
    Hostile input to the IMAP listener.
    """

    def imap(self, *chunks: bytes, **kw: Any) -> defer.Deferred:
        return self.inThread(converse, self.server.ports["imap"], list(chunks), **kw)

    def login(self) -> bytes:
        return b'l LOGIN %s "%s"\r\n' % (ALICE.encode(), PASSWORD.encode())

    @defer.inlineCallbacks
    def test_overlongLine(self):
        """
        A command line over the limit gets BAD (or BYE) and nothing of it
        runs.
        """
        reply = yield self.imap(b"a LOGIN " + b"x" * 200_000 + b" y\r\n", b"b NOOP\r\n", b"c LOGOUT\r\n")
        self.assertRegex(reply, rb"(?m)^(a |\* )?(BAD|BYE)")
        self.assertNotIn(b"a OK", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_overlongNoNewline(self):
        """
        Megabytes with no line end are not buffered whole.
        """
        reply = yield self.imap(b"a " + b"X" * 2_000_000, b"\r\nz LOGOUT\r\n")
        self.assertTrue(reply.startswith(b"* OK"), reply[:200])
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_nulAnd8bit(self):
        """
        NUL in a command gets BAD; 8-bit octets in an atom get BAD; a user
        name with NUL does not log in.
        """
        reply = yield self.imap(
            b"a NO\x00OP\r\n",
            b"b LOGIN alice@example.test\x00 x\r\n",
            b'c LOGIN "alice@example.test\x00" "%s"\r\n' % PASSWORD.encode(),
            b"d \xff\xfe\r\n",
            b"e LOGIN {19}\r\nalice@example.test\x00 " + PASSWORD.encode() + b"\r\n",
            b"f LOGOUT\r\n",
        )
        for tag in (b"a", b"b", b"c", b"d"):
            self.assertRegex(reply, rb"(?m)^" + tag + rb" (BAD|NO)")
        self.assertNotIn(b"e OK", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_unterminatedLiteral(self):
        """
        A literal that never arrives whole, then the client leaves: the
        server lets the connection go.
        """
        reply = yield self.imap(b"a LOGIN {100}\r\n", b"abc", halfClose=True)
        self.assertIn(b"+ ", reply)
        reply = yield self.inThread(dialog, self.server.ports["imap"], [
            (self.login(), b"l OK"), (b"b APPEND INBOX {1000}\r\n", b"+ "), (b"Subject: x\r\n\r\nshort", None)])
        self.assertIn(b"l OK", reply)
        self.assertNotIn(b"b OK", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_giantLiteral(self):
        """
        Giant literal counts are refused before anything is buffered, with
        no continuation request; a non-synchronising one too.
        """
        reply = yield self.imap(
            self.login(),
            b"a APPEND INBOX {99999999999999999999}\r\n",
            b"b APPEND INBOX {4294967296}\r\n",
            b"c LOGOUT\r\n",
        )
        self.assertIn(b"l OK", reply)
        self.assertRegex(reply, rb"(?m)^(a (NO|BAD)|\* BYE)")
        self.assertNotIn(b"\r\n+ ", reply)
        self.assertNotIn(b"a OK", reply)
        reply = yield self.inThread(dialog, self.server.ports["imap"], [
            (self.login(), b"l OK"), (b"a APPEND INBOX {99999999999+}\r\nxyz", None), (b"b NOOP\r\n", None)])
        # A refused non-synchronising literal is read and thrown away (RFC
        # 7888 4 lets the server do that or close): nothing is appended
        # and nothing after it runs as a command.
        self.assertIn(b"l OK", reply)
        self.assertNotIn(b"a OK", reply)
        self.assertNotIn(b"b OK", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_wrongState(self):
        """
        Selected-state commands before login or before SELECT: BAD or NO.
        """
        reply = yield self.imap(
            b"a SELECT INBOX\r\nb FETCH 1 BODY[]\r\nc LIST \"\" *\r\nd EXPUNGE\r\n",
            self.login(),
            b"e FETCH 1:* BODY[]\r\nf STORE 1 +FLAGS (\\Deleted)\r\ng CLOSE\r\nh LOGIN x y\r\ni LOGOUT\r\n",
        )
        for tag in (b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"):
            self.assertRegex(reply, rb"(?m)^" + tag + rb" (BAD|NO)")
        self.assertIn(b"l OK", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_pipelineFlood(self):
        """
        Thousands of pipelined commands are all answered, or the client is
        cut off; the server stays up.
        """
        count = 5000
        flood = b"".join(b"n%d NOOP\r\n" % i for i in range(count))
        reply = yield self.imap(self.login() + flood + b"z LOGOUT\r\n")
        self.assertTrue(reply.count(b" OK NOOP") + reply.count(b" OK") >= count or b"* BYE" in reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_slowClient(self):
        """
        A client trickling one octet per reactor turn is served, literal
        included.
        """
        data = b"a LOGIN {18}\r\nalice@example.test " + b'"%s"\r\nb LOGOUT\r\n' % PASSWORD.encode()
        reply = yield trickle(self.server.ports["imap"], data, b"b OK")
        self.assertIn(b"a OK", reply)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_manyConnections(self):
        """
        A hundred connections at once each get the greeting.
        """
        greetings = yield self.inThread(manyConnections, self.server.ports["imap"], 100, b"* OK")
        self.assertEqual(len(greetings), 100)
        for greeting in greetings:
            self.assertTrue(greeting.startswith(b"* OK") or greeting.startswith(b"* BYE"), greeting)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_badLoginFlood(self):
        """
        Repeated failed logins end in BYE.
        """
        reply = yield self.imap(b"".join(b"t%d LOGIN alice@example.test wrong\r\n" % i for i in range(50)))
        self.assertIn(b"* BYE", reply)
        yield self.assertClean()


class ConnectionLimitTests(HostileMixin, TestCase):
    """
    L{limitConnections} around the server's real factories refuses the
    connection over the limit with each protocol's own line.
    """

    @defer.inlineCallbacks
    def limitedPort(self, name: str) -> Any:
        factory = limitConnections(self.server.server.factories[name], 2, 100, refusalLine(name, HOSTNAME))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # The new listener's own descriptor.
        self.baseFDs += 1
        yield None
        return port.getHost().port

    @defer.inlineCallbacks
    def check(self, name: str, greeting: bytes) -> Any:
        port = yield self.limitedPort(name)

        def scenario() -> List[bytes]:
            kept = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
            try:
                firsts = [s.recv(4096) for s in kept]
                refused = converse(port, [], halfClose=False)
            finally:
                for s in kept:
                    s.close()
            return firsts + [refused]

        first, second, refused = yield self.inThread(scenario)
        self.assertTrue(first.startswith(greeting) and second.startswith(greeting), (first, second))
        self.assertEqual(refused, refusalLine(name, HOSTNAME))
        # Once they have gone, a new connection is served again.
        yield self.settled()
        for _ in range(SETTLE_TURNS):
            again = yield self.inThread(converse, port, [], halfClose=False, until=b"\r\n")
            if again.startswith(greeting):
                break
        self.assertTrue(again.startswith(greeting), again)
        yield self.assertClean()

    def test_smtp(self):
        return self.check("smtp", b"220 ")

    def test_pop3(self):
        return self.check("pop3", b"+OK")

    def test_imap(self):
        return self.check("imap", b"* OK")


class OpenRelayTests(HostileMixin, TestCase):
    """
    The MX role relays for nobody, however the recipient is spelled.
    """

    RECIPIENTS: List[bytes] = [
        b"<user%other.test@example.test>",
        b"<alice%other.test@example.test>",
        b"<alice%other.test@EXAMPLE.TEST>",
        b"<user%other.test@example.test.>",
        b"<other.test!user@example.test>",
        b"<other!user@example.test>",
        b"<other.test!alice@example.test>",
        b"<OTHER.TEST!USER@EXAMPLE.TEST>",
        b"<other.test!user>",
        b"<other.test!user@[127.0.0.1]>",
        b"<@example.test:user@other.test>",
        b"<@example.test,@relay.test:user@other.test>",
        b"<@EXAMPLE.TEST:USER@OTHER.TEST>",
        b'<"user@other.test"@example.test>',
        b'<"user@other.test">',
        b'<"user%other.test"@example.test>',
        b'<"alice@other.test"@example.test>',
        b"<user@[1.2.3.4]>",
        b"<user@[127.0.0.1]>",
        b"<postmaster@[127.0.0.1]>",
        b"<user@[IPv6:::1]>",
        b"<user@[IPv6:2001:db8::1]>",
        b"<user@other.test>",
        b"<USER@OTHER.TEST>",
        b"<user@other.test.>",
        b"<user@example.test.other.test>",
        b"<user@other.test.example.test>",
        b"<user@example.test@other.test>",
        b"<user@other.test@example.test>",
        b"<user@localhost>",
        b"<user@localhost.>",
        b"<user@mail.example.test>",
        b"<user%other.test>",
        b"<user>",
        b"<other.test:user>",
        b"<user@other.test\\>",
        b"<user@other\x00.test>",
        b"user@other.test",
        b"<user@other.test> NOTIFY=NEVER",
        b"<alice@example.test\r\nRCPT TO:<user@other.test>>",
    ]

    #: A recipient at one of our own accounts: the only one to accept.
    ACCEPTABLE = (b"<alice@example.test>",)

    def queueFiles(self) -> List[str]:
        queue = os.path.join(self.dataDir, "queue")
        found = []
        for directory, _, files in os.walk(queue):
            found.extend(os.path.join(directory, f) for f in files if not f.startswith("."))
        return [f for f in found if not f.endswith(".lock")]

    @defer.inlineCallbacks
    def test_battery(self):
        """
        Each tricky recipient gets 550, 553, 554 or 501 (or 5xx), never
        250; a message then offered with DATA to any that was accepted
        is not queued for relay.
        """
        before = self.queueFiles()
        results: Dict[bytes, bytes] = {}
        for recipient in self.RECIPIENTS:
            reply = yield self.inThread(converse, self.server.ports["smtp"], [
                b"EHLO attacker.test\r\n",
                b"MAIL FROM:<spammer@far.test>\r\n",
                b"RCPT TO:" + recipient + b"\r\n",
                b"DATA\r\n",
                b"Subject: relay test\r\n\r\nrelayed?\r\n.\r\n",
                b"QUIT\r\n",
            ])
            lines = [line for line in reply.split(b"\r\n") if re.match(rb"^\d{3} ", line)]
            # 220, EHLO 250, MAIL 250, then the RCPT reply.
            self.assertGreaterEqual(len(lines), 4, (recipient, reply))
            results[recipient] = lines[3]
        accepted = {r: line for r, line in results.items() if not line.startswith(b"5")}
        self.assertEqual(accepted, {}, "recipients not refused")
        for recipient, line in results.items():
            self.assertRegex(line, rb"^(550|551|553|554|501|500|555) ", recipient)
        self.assertEqual(self.queueFiles(), before)
        yield self.assertClean()

    @defer.inlineCallbacks
    def test_localStillWorks(self):
        """
        The battery's control: a plain local recipient is accepted and
        delivered, not queued.
        """
        reply = yield self.inThread(converse, self.server.ports["smtp"], [
            b"EHLO attacker.test\r\nMAIL FROM:<someone@far.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
            b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n",
        ])
        self.assertIn(b"\r\n354 ", reply)
        self.assertRegex(reply, rb"\r\n250 [^\r]*\r\n221 ")
        self.assertEqual(self.queueFiles(), [])
        yield self.assertClean()
