"""
Metrics: the registry and its page, the hooks (connections, command
latency with pipelining, TLS handshakes, logins, deliveries, queue), the
session and delivery log lines, and the page served by a real L{Server}
on loopback after SMTP (with STARTTLS), POP3, IMAP and IMAPS sessions.
"""

import imaplib
import io
import os
import poplib
import smtplib
import socket
import ssl
import sys
import tempfile
from typing import Any, List

from prometheus_client import CollectorRegistry, Counter, Histogram
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import eventsFromJSONLogFile, formatEvent, globalLogPublisher
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from zope.interface import Interface, implementer

from mailplat.auth.passwd import PasswordFile
from mailplat.config import Config
from mailplat.errors import SMTPReply
from mailplat.imap.server import IMAPFactory
from mailplat.metrics import (
    COMMAND_BUCKETS,
    FLUSH_INTERVAL,
    MAX_COMMAND_LABELS,
    MULTIPROCESS_ENV,
    CountingPortal,
    Metrics,
    QueueCollector,
    countDeliveries,
    instrumentFactory,
    jsonLogObserver,
)
from mailplat.pop3.server import POP3Factory
from mailplat.service import Server
from mailplat.smtp.server import SMTPFactory
from tests.test_smtp_server import FakeDelivery

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)


def _histogram(m: Metrics, protocol: str, command: str) -> tuple:
    """
    C{(count, sum)} of the command latency histogram of C{command}.
    """
    labels = {"protocol": protocol, "command": command}
    return (m.value("mailplat_command_duration_seconds_count", **labels),
            m.value("mailplat_command_duration_seconds_sum", **labels))


class _Events:
    """
    Collects the log events of the test that have an C{event} field.
    """

    def __init__(self, test: Any) -> None:
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        if "event" in event and event.get("log_namespace") == "mailplat.metrics":
            self.events.append(event)

    def of(self, kind: str) -> List[dict]:
        return [e for e in self.events if e["event"] == kind]


class MetricsTests(SynchronousTestCase):
    """
    L{Metrics} counts into its own prometheus-client registry and renders
    the Prometheus text format.
    """

    def test_render(self) -> None:
        m = Metrics()
        m.inc("mailplat_connections_total", listener="smtp")
        m.inc("mailplat_connections_total", listener="smtp")
        m.inc("mailplat_connections_total", listener='we"ird')
        text, contentType = m.render()
        text = text.decode()
        self.assertEqual(contentType.split(";")[0], "text/plain")
        self.assertIn("# TYPE mailplat_connections_total counter\n", text)
        self.assertIn('mailplat_connections_total{listener="smtp"} 2.0\n', text)
        self.assertIn('mailplat_connections_total{listener="we\\"ird"} 1.0\n', text)
        self.assertEqual(m.value("mailplat_connections_total", listener="smtp"), 2)
        self.assertEqual(m.value("mailplat_connections_total", listener="imap"), 0)

    def test_openMetrics(self) -> None:
        """
        A scraper asking for OpenMetrics gets it.
        """
        m = Metrics()
        m.inc("mailplat_deliveries_total", result="ok")
        text, contentType = m.render("application/openmetrics-text; version=1.0.0")
        self.assertTrue(contentType.startswith("application/openmetrics-text"), contentType)
        self.assertIn(b'mailplat_deliveries_total{result="ok"} 1.0', text)
        self.assertTrue(text.endswith(b"# EOF\n"))

    def test_ownRegistry(self) -> None:
        """
        Two servers in one process count apart.
        """
        a, b = Metrics(), Metrics()
        a.inc("mailplat_deliveries_total", result="ok")
        self.assertEqual(a.value("mailplat_deliveries_total", result="ok"), 1)
        self.assertEqual(b.value("mailplat_deliveries_total", result="ok"), 0)

    def test_commandLabelsBounded(self) -> None:
        m = Metrics()
        for i in range(MAX_COMMAND_LABELS + 20):
            m.command("smtp", "X" * (i % 20 + 1) + chr(ord("A") + i // 20)).finished()
        m.command("smtp", "bad verb!").finished()
        labels = {s.labels["command"] for family in m.registry.collect() for s in family.samples
                  if s.name == "mailplat_commands_total"}
        self.assertLessEqual(len(labels), MAX_COMMAND_LABELS + 1)
        self.assertIn("other", labels)
        others = m.value("mailplat_commands_total", protocol="smtp", command="other")
        self.assertGreater(others, 20)
        self.assertEqual(_histogram(m, "smtp", "other")[0], others)

    def test_commandFiguresExact(self) -> None:
        """
        Commands are counted and timed into plain figures, added into the
        prometheus-client metrics before every read: the page shows exactly
        what prometheus-client's own C{inc} and C{observe} would, bucket
        by bucket (durations on a bound, between bounds, above them all, a
        negative one), and reading again counts nothing twice.
        """
        clock = Clock()
        m = Metrics(timer=clock.seconds)
        reference = CollectorRegistry()
        counter = Counter("mailplat_commands", "", ["command", "protocol"], registry=reference)
        histogram = Histogram("mailplat_command_duration_seconds", "", ["command", "protocol"],
                              buckets=COMMAND_BUCKETS, registry=reference)
        durations = [0.0, 0.0005, 0.0006, 0.001, 0.3, 2.5, 59.0, 61.0, 1e6, 0.25]
        for round in range(2):
            for d in durations:
                # From 0, so that the duration is exactly d.
                clock.rightNow = 0.0
                timer = m.command("pop3", "RETR")
                clock.advance(d)
                timer.finished()
                counter.labels(command="RETR", protocol="pop3").inc()
                histogram.labels(command="RETR", protocol="pop3").observe(d)
            # Taken up, not finished: counted, not yet timed.
            m.command("pop3", "retr")
            counter.labels(command="RETR", protocol="pop3").inc()
            timer = m.command("pop3", "QUIT")
            clock.advance(-1)
            timer.finished()
            counter.labels(command="QUIT", protocol="pop3").inc()
            histogram.labels(command="QUIT", protocol="pop3").observe(0)

            def samples(registry: CollectorRegistry) -> dict:
                return {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in registry.collect() if family.name.startswith("mailplat_command")
                        for s in family.samples if not s.name.endswith("_created")}

            expected = samples(reference)
            self.assertEqual(len(expected), 2 * (len(COMMAND_BUCKETS) + 1 + 2) + 2)
            self.assertEqual(samples(m.registry), expected)
            # Read again: the same.
            self.assertEqual(samples(m.registry), expected)
        self.assertEqual(m.value("mailplat_commands_total", protocol="pop3", command="RETR"), 22)
        self.assertEqual(_histogram(m, "pop3", "RETR"), (20, 2 * sum(durations)))
        self.assertIn('mailplat_command_duration_seconds_bucket{command="RETR",le="+Inf",protocol="pop3"} 20.0',
                      m.render()[0].decode())

    def test_multiprocessFlush(self) -> None:
        """
        Sharing its figures with other processes (C{--workers}), a process
        writes its command figures to the shared files every
        L{FLUSH_INTERVAL} seconds, when a connection ends and when it stops
        flushing (at shutdown): another process's page then reads them
        exactly; until then it does not see them.
        """
        import prometheus_client.values as values
        from prometheus_client.multiprocess import MultiProcessCollector

        saved, savedEnv = values.ValueClass, os.environ.get(MULTIPROCESS_ENV)

        def restore() -> None:
            values.ValueClass = saved
            if savedEnv is None:
                os.environ.pop(MULTIPROCESS_ENV, None)
            else:
                os.environ[MULTIPROCESS_ENV] = savedEnv

        self.addCleanup(restore)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        clock, durations = Clock(), Clock()
        m = Metrics(timer=durations.seconds)
        m.shareThrough(directory, clock)
        page = CollectorRegistry()
        MultiProcessCollector(page, path=directory)

        def seen(command: str) -> tuple:
            labels = {"protocol": "imap", "command": command}
            return tuple(page.get_sample_value(name, labels) or 0 for name in (
                "mailplat_commands_total", "mailplat_command_duration_seconds_count",
                "mailplat_command_duration_seconds_sum"))

        def run(command: str, seconds: float) -> None:
            timer = m.command("imap", command)
            durations.advance(seconds)
            timer.finished()

        run("SELECT", 2)
        run("SELECT", 3)
        clock.advance(FLUSH_INTERVAL * 0.99)
        self.assertEqual(seen("SELECT"), (0, 0, 0))
        clock.advance(FLUSH_INTERVAL * 0.01)
        self.assertEqual(seen("SELECT"), (2, 2, 5))
        run("FETCH", 1)
        self.assertEqual(seen("FETCH"), (0, 0, 0))
        m.connectionEnded()
        self.assertEqual(seen("FETCH"), (1, 1, 1))
        run("FETCH", 4)
        m.stopFlushing()
        self.assertEqual(seen("FETCH"), (2, 2, 5))
        self.assertEqual(clock.getDelayedCalls(), [])
        # This process's own page adds what it gathered first, too.
        run("NOOP", 0)
        self.assertEqual(m.value("mailplat_commands_total", protocol="imap", command="NOOP"), 1)
        self.assertEqual(seen("SELECT"), (2, 2, 5))

    def test_queueCollector(self) -> None:
        """
        Depth and the oldest entry's age of the file queue (its entries)
        and of the SQL queue (the figures it keeps).
        """

        class Entry:
            def __init__(self, created: float) -> None:
                self.created = created

        class FileQueue:
            entries: list = []

            def list(self) -> list:
                return self.entries

        clock = Clock()
        clock.advance(1000)
        queue = FileQueue()
        m = Metrics()
        m.register(QueueCollector(queue, clock))
        self.assertEqual(m.value("mailplat_queue_depth"), 0)
        self.assertEqual(m.value("mailplat_queue_oldest_age_seconds"), 0)
        queue.entries = [Entry(900), Entry(400), Entry(950)]
        self.assertEqual(m.value("mailplat_queue_depth"), 3)
        self.assertEqual(m.value("mailplat_queue_oldest_age_seconds"), 600)

        class SQLQueue:
            depth = 2
            oldest = 990.0

        self.assertEqual(QueueCollector(SQLQueue(), clock).figures(), (2, 10.0))
        del SQLQueue.oldest
        self.assertEqual(QueueCollector(SQLQueue(), clock).figures(), (2, None))
        text = m.render()[0].decode()
        self.assertIn("mailplat_queue_depth 3.0\n", text)
        self.assertIn("mailplat_queue_oldest_age_seconds 600.0\n", text)

    def test_countingPortal(self) -> None:
        class IThing(Interface):
            pass

        @implementer(IRealm)
        class Realm:
            def requestAvatar(self, avatarId, mind, *interfaces):
                return interfaces[0], object(), lambda: None

        m = Metrics()
        checker = InMemoryUsernamePasswordDatabaseDontUse(a=b"good")
        portal = CountingPortal(Portal(Realm(), [checker]), "pop3", m)
        self.successResultOf(portal.login(UsernamePassword(b"a", b"good"), None, IThing))
        self.failureResultOf(portal.login(UsernamePassword(b"a", b"bad"), None, IThing), UnauthorizedLogin)
        self.assertEqual(m.value("mailplat_login_failures_total", protocol="pop3", mechanism="password"), 1)

    def test_countDeliveries(self) -> None:
        """
        Each delivery is counted by result and logged once, with its
        sender, recipients, size, result and duration.
        """
        events = _Events(self)
        answers = [defer.succeed(None), defer.fail(SMTPReply(550, "5.1.1", "No such user")),
                   defer.fail(SMTPReply(451, "4.3.0", "Later")), defer.fail(ValueError("bug"))]

        class Session:
            peerHost = "192.0.2.1"
            authenticated = "alice@example.test"

        class Delivery:
            def deliver(self, session, sender, recipients, message):
                return answers.pop(0)

        clock = Clock()
        m = Metrics(timer=clock.seconds)
        d = Delivery()
        countDeliveries(d, m)
        self.successResultOf(d.deliver(Session(), "a@b.test", ["c@d.test"], io.BytesIO(b"x" * 10)))
        self.failureResultOf(d.deliver(Session(), None, ["c@d.test"], io.BytesIO(b"")), SMTPReply)
        self.failureResultOf(d.deliver(Session(), None, ["c@d.test"], io.BytesIO(b"")), SMTPReply)
        self.failureResultOf(d.deliver(Session(), None, ["c@d.test"], io.BytesIO(b"")), ValueError)
        for result in ("ok", "rejected", "deferred", "failed"):
            self.assertEqual(m.value("mailplat_deliveries_total", result=result), 1, result)
        logged = events.of("delivery")
        self.assertEqual([e["result"] for e in logged], ["ok", "rejected", "deferred", "failed"])
        self.assertEqual((logged[0]["sender"], logged[0]["recipients"], logged[0]["size"]),
                         ("a@b.test", ["c@d.test"], 10))
        self.assertEqual((logged[0]["peer"], logged[0]["user"]), ("192.0.2.1", "alice@example.test"))
        self.assertEqual(formatEvent(logged[0]), "delivery from <a@b.test> to ['c@d.test']: ok, 10 bytes, 0.000s")
        self.assertEqual(formatEvent(logged[1]), "delivery from <> to ['c@d.test']: rejected (550 5.1.1 No such user), 0 bytes, 0.000s")

    def test_countDeliveriesLeavesSpoolInMemory(self) -> None:
        """
        The size of a message spooled in memory is read without making the
        spool move to a file on disk.
        """
        events = _Events(self)

        class Delivery:
            def deliver(self, session, sender, recipients, message):
                return defer.succeed(None)

        d = Delivery()
        countDeliveries(d, Metrics())
        spool = tempfile.SpooledTemporaryFile(max_size=1000)
        spool.write(b"x" * 100)
        spool.seek(0)
        self.successResultOf(d.deliver(None, None, ["c@d.test"], spool))
        self.assertFalse(spool._rolled)  # type: ignore[attr-defined]
        self.assertEqual(spool.tell(), 0)
        self.assertEqual(events.of("delivery")[0]["size"], 100)

    def test_jsonLogObserver(self) -> None:
        """
        The observer for C{twistd --logger} writes one JSON event a line,
        readable back with its fields.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = jsonLogObserver()
        observer({"log_format": "{protocol} session ended", "event": "session", "protocol": "imap",
                  "duration": 1.5, "log_time": 0.0, "log_level": None})
        self.assertEqual(out.getvalue().count("\n"), 1)
        [event] = list(eventsFromJSONLogFile(io.StringIO(out.getvalue())))
        self.assertEqual((event["event"], event["protocol"], event["duration"]), ("session", "imap", 1.5))


class SlowPortal(Portal):
    """
    A portal whose logins wait until the test answers them.
    """

    def __init__(self) -> None:
        super().__init__(None, [InMemoryUsernamePasswordDatabaseDontUse(a=b"b")])
        self.pending: List[Deferred] = []

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


class CommandLatencyTests(SynchronousTestCase):
    """
    The real protocols, wrapped as the server wraps them: each command is
    counted and timed from taking up its line to its final reply, with
    pipelined commands each timed on their own.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(timer=self.clock.seconds)
        self.events = _Events(self)

    def connect(self, factory: Any, name: str) -> Any:
        wrapped = instrumentFactory(factory, name, self.metrics)
        self.transport = StringTransport(peerAddress=LOOPBACK)
        protocol = wrapped.buildProtocol(LOOPBACK)
        protocol.makeConnection(self.transport)
        self.assertEqual(self.metrics.value("mailplat_connections_open", listener=name), 1)
        return protocol

    def output(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    def test_smtpPipelined(self) -> None:
        """
        MAIL, RCPT and DATA sent at once: each is timed from when the
        server takes it up (after the previous reply) to its own reply;
        DATA to the final 250 after the message.
        """
        delivery = FakeDelivery()
        sender, recipient, delivered = Deferred(), Deferred(), Deferred()
        delivery.senderAnswer = sender
        delivery.recipientAnswers["b@example.test"] = recipient
        delivery.deliverAnswer = delivered
        clock = Clock()
        protocol = self.connect(SMTPFactory(delivery, "mx.example.test", clock=clock), "smtp")
        protocol.dataReceived(b"EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        self.clock.advance(2)
        sender.callback(None)
        self.clock.advance(3)
        recipient.callback(None)
        self.assertIn(b"354 ", self.output())
        self.clock.advance(5)
        protocol.dataReceived(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        self.clock.advance(7)
        delivered.callback(None)
        self.assertIn(b"250 2.0.0", self.output())
        protocol.dataReceived(b"QUIT\r\n")
        m = self.metrics
        self.assertEqual(_histogram(m, "smtp", "EHLO"), (1, 0))
        self.assertEqual(_histogram(m, "smtp", "MAIL"), (1, 2))
        self.assertEqual(_histogram(m, "smtp", "RCPT"), (1, 3))
        self.assertEqual(_histogram(m, "smtp", "DATA"), (1, 12))
        self.assertEqual(_histogram(m, "smtp", "QUIT"), (1, 0))
        self.assertEqual(m.value("mailplat_commands_total", protocol="smtp", command="MAIL"), 1)
        # The bucket holding 3 seconds counts RCPT, the one below does not.
        self.assertEqual(m.value("mailplat_command_duration_seconds_bucket", protocol="smtp", command="RCPT",
                                 le="2.5"), 0)
        self.assertEqual(m.value("mailplat_command_duration_seconds_bucket", protocol="smtp", command="RCPT",
                                 le="5.0"), 1)
        self.clock.advance(1)
        protocol.connectionLost(None)
        self.assertEqual(m.value("mailplat_connections_open", listener="smtp"), 0)
        self.assertEqual(m.value("mailplat_connections_total", listener="smtp"), 1)
        [session] = self.events.of("session")
        self.assertEqual((session["protocol"], session["peer"], session["user"], session["commands"]),
                         ("smtp", "127.0.0.1", "-", 5))
        self.assertEqual(session["duration"], 18)
        self.assertGreater(session["bytesIn"], 90)
        self.assertGreater(session["bytesOut"], 100)

    def test_smtpUnknownVerb(self) -> None:
        """
        A made-up verb counts as itself (bounded); an overlong line is no
        command and leaves no timer behind.
        """
        protocol = self.connect(SMTPFactory(FakeDelivery(), "mx.example.test", clock=Clock()), "submission")
        protocol.dataReceived(b"FOO bar\r\n" + b"X" * 5000 + b"\r\nNOOP\r\n")
        self.assertEqual(_histogram(self.metrics, "smtp", "FOO"), (1, 0))
        self.assertEqual(_histogram(self.metrics, "smtp", "NOOP"), (1, 0))
        self.assertEqual(self.metrics.value("mailplat_connections_total", listener="submission"), 1)

    def test_pop3(self) -> None:
        """
        POP3: a command that waits on the portal is timed to its answer; a
        refused login is counted by mechanism; the session line names the
        protocol.
        """
        portal = SlowPortal()
        factory = POP3Factory(CountingPortal(portal, "pop3", self.metrics), "pop.example.test", clock=Clock())
        protocol = self.connect(factory, "pop3s")
        protocol.dataReceived(b"CAPA\r\nUSER a@example.test\r\nPASS nope\r\nNOOP\r\n")
        self.assertEqual(len(portal.pending), 1)
        self.clock.advance(4)
        portal.pending[0].errback(UnauthorizedLogin())
        self.assertIn(b"-ERR", self.output())
        m = self.metrics
        self.assertEqual(_histogram(m, "pop3", "CAPA"), (1, 0))
        self.assertEqual(_histogram(m, "pop3", "PASS"), (1, 4))
        self.assertEqual(m.value("mailplat_login_failures_total", protocol="pop3", mechanism="password"), 1)
        # NOOP is not valid before login: answered with -ERR, and timed.
        self.assertEqual(_histogram(m, "pop3", "NOOP"), (1, 0))
        protocol.connectionLost(None)
        [session] = self.events.of("session")
        self.assertEqual((session["protocol"], session["listener"], session["commands"]), ("pop3", "pop3s", 4))

    def test_imap(self) -> None:
        """
        IMAP: timed to the tagged reply.
        """
        portal = SlowPortal()
        factory = IMAPFactory(CountingPortal(portal, "imap", self.metrics), "imap.example.test", clock=Clock())
        protocol = self.connect(factory, "imap")
        protocol.dataReceived(b"a CAPABILITY\r\nb LOGIN a@example.test nope\r\nc NOOP\r\n")
        self.clock.advance(6)
        portal.pending[0].errback(UnauthorizedLogin())
        out = self.output()
        self.assertIn(b"b NO", out)
        self.assertIn(b"c OK", out)
        m = self.metrics
        self.assertEqual(_histogram(m, "imap", "CAPABILITY"), (1, 0))
        self.assertEqual(_histogram(m, "imap", "LOGIN"), (1, 6))
        self.assertEqual(_histogram(m, "imap", "NOOP"), (1, 0))
        self.assertEqual(m.value("mailplat_login_failures_total", protocol="imap", mechanism="password"), 1)


def _portOf(listener) -> defer.Deferred:
    """
    The port a strports service listens on, leaving the service's own
    Deferred its result (it stops the port with it).
    """
    d: defer.Deferred = defer.Deferred()

    def got(port):
        d.callback(port)
        return port

    listener._waitingForPort.addCallback(got)
    return d


class ServedMetricsTests(TestCase):
    """
    A real server on loopback: an SMTP session with STARTTLS that delivers
    a message, a POP3 and an IMAP session, an IMAPS login that fails, a
    broken TLS handshake; then the page read with an HTTP GET.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_page(self):
        events = _Events(self)
        dataDir = os.path.abspath(self.mktemp())
        listen = "tcp:0:interface=127.0.0.1"
        config = Config(dataDir=dataDir, hostname="mx.example.test", store="memory", domains=("example.test",),
                        listeners={"smtp": listen, "pop3": listen, "imap": listen, "imaps": listen},
                        metricsListener=listen)
        server = Server(config)
        top = server.service()
        top.startService()
        self.addCleanup(top.stopService)
        PasswordFile(os.path.join(dataDir, "passwd")).setPassword("alice@example.test", "s3cret")
        yield server.store.getAccount("alice@example.test", create=True)
        ports = {}
        for name in ("smtp", "pop3", "imap", "imaps", "metrics"):
            ports[name] = (yield _portOf(top.getServiceNamed(name))).getHost().port
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE

        def sessions():
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
                s.ehlo("client.test")
                s.starttls(context=insecure)
                s.ehlo("client.test")
                s.sendmail("bob@far.test", ["alice@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
            pop = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
            pop.user("alice@example.test")
            pop.pass_("s3cret")
            pop.stat()
            pop.quit()
            imap = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30)
            imap.login("alice@example.test", "s3cret")
            imap.select("INBOX")
            imap.logout()
            imaps = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=insecure, timeout=30)
            try:
                imaps.login("alice@example.test", "wrong")
            except imaplib.IMAP4.error:
                pass
            imaps.logout()
            # Not TLS at all: the handshake fails.
            with socket.create_connection(("127.0.0.1", ports["imaps"]), timeout=30) as raw:
                raw.sendall(b"a LOGIN x y\r\n" * 20)
                while raw.recv(4096):
                    pass

        yield threads.deferToThread(sessions)
        # The server sees the last connections end a moment after the
        # clients do: wait for it (bounded).
        for _ in range(500):
            if not any(server.metrics.value("mailplat_connections_open", listener=n)
                       for n in ("smtp", "pop3", "imap", "imaps")):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{ports['metrics']}/metrics".encode())
        body = (yield readBody(response)).decode()
        self.assertEqual(response.headers.getRawHeaders(b"content-type")[0].split(b";")[0], b"text/plain")
        lines = set(body.splitlines())

        def has(line: str) -> None:
            self.assertIn(line, lines, body)

        has('mailplat_connections_total{listener="smtp"} 1.0')
        has('mailplat_connections_total{listener="pop3"} 1.0')
        has('mailplat_connections_total{listener="imap"} 1.0')
        has('mailplat_connections_total{listener="imaps"} 2.0')
        has('mailplat_connections_open{listener="imaps"} 0.0')
        has('mailplat_commands_total{command="EHLO",protocol="smtp"} 2.0')
        has('mailplat_commands_total{command="STARTTLS",protocol="smtp"} 1.0')
        has('mailplat_command_duration_seconds_count{command="DATA",protocol="smtp"} 1.0')
        has('mailplat_command_duration_seconds_count{command="STAT",protocol="pop3"} 1.0')
        has('mailplat_command_duration_seconds_count{command="SELECT",protocol="imap"} 1.0')
        has('mailplat_command_duration_seconds_count{command="LOGIN",protocol="imap"} 2.0')
        has('mailplat_tls_handshakes_total{listener="smtp",protocol="smtp",result="ok"} 1.0')
        has('mailplat_tls_handshakes_total{listener="imaps",protocol="imap",result="ok"} 1.0')
        has('mailplat_tls_handshakes_total{listener="imaps",protocol="imap",result="failed"} 1.0')
        has('mailplat_tls_handshake_duration_seconds_count{listener="smtp",protocol="smtp"} 1.0')
        has('mailplat_tls_handshake_duration_seconds_count{listener="imaps",protocol="imap"} 1.0')
        has('mailplat_login_failures_total{mechanism="password",protocol="imap"} 1.0')
        has('mailplat_deliveries_total{result="ok"} 1.0')
        has("mailplat_queue_depth 0.0")
        has("mailplat_queue_oldest_age_seconds 0.0")
        # One line per session and per delivery, with their figures.
        sessions = events.of("session")
        self.assertEqual(sorted(e["listener"] for e in sessions), ["imap", "imaps", "imaps", "pop3", "smtp"])
        byListener = {e["listener"]: e for e in sessions}
        self.assertEqual(byListener["pop3"]["user"], "alice@example.test")
        self.assertEqual(byListener["imap"]["user"], "alice@example.test")
        # imaplib: CAPABILITY, LOGIN, SELECT, LOGOUT.
        self.assertEqual(byListener["imap"]["commands"], 4)
        self.assertTrue(byListener["smtp"]["tls"])
        for e in sessions:
            self.assertEqual(e["peer"], "127.0.0.1")
            self.assertGreaterEqual(e["duration"], 0)
        [delivery] = events.of("delivery")
        self.assertEqual((delivery["result"], delivery["recipients"]), ("ok", ["alice@example.test"]))
