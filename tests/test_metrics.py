"""
Metrics: the registry and its text format, the counting wrappers, and the
page served by a real L{Server} on loopback.
"""

import os
import smtplib

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from zope.interface import Interface, implementer

from mailplat.config import Config
from mailplat.metrics import (
    MAX_COMMAND_LABELS,
    CountingPortal,
    Metrics,
    countDeliveries,
    instrumentFactory,
    jsonLogObserver,
)
from mailplat.service import Server


class MetricsTests(TestCase):
    """
    L{Metrics} counts and renders the Prometheus text format.
    """

    def test_render(self) -> None:
        m = Metrics()
        m.inc("mailplat_connections_total", listener="smtp")
        m.inc("mailplat_connections_total", listener="smtp")
        m.inc("mailplat_connections_total", listener='we"ird')
        m.gaugeFunction("mailplat_queue_depth", lambda: 7)
        text = m.render().decode()
        self.assertIn("# TYPE mailplat_connections_total counter\n", text)
        self.assertIn('mailplat_connections_total{listener="smtp"} 2.0\n', text)
        self.assertIn('mailplat_connections_total{listener="we\\"ird"} 1.0\n', text)
        self.assertIn("mailplat_queue_depth 7.0\n", text)
        self.assertEqual(m.value("mailplat_queue_depth"), 7)

    def test_commandLabelsBounded(self) -> None:
        m = Metrics()
        for i in range(MAX_COMMAND_LABELS + 20):
            m.command("smtp", "X" * (i % 20 + 1) + chr(ord("A") + i // 20))
        m.command("smtp", "bad verb!")
        labels = {dict(k)["command"] for k in m._values["mailplat_commands_total"]}
        self.assertLessEqual(len(labels), MAX_COMMAND_LABELS + 1)
        self.assertIn("other", labels)

    def test_instrumentFactory(self) -> None:
        """
        Connections open and total, and the commands through the
        protocol's C{_command}.
        """
        m = Metrics()

        class P(Protocol):
            def _command(self, line: str) -> str:
                return line

        factory = instrumentFactory(Factory.forProtocol(P), "submission", m)
        p = factory.buildProtocol(None)
        p.makeConnection(StringTransport())
        self.assertEqual(p._command("ehlo x"), "ehlo x")
        p._command("MAIL FROM:<a@b>")
        self.assertEqual(m.value("mailplat_connections_open", listener="submission"), 1)
        p.connectionLost(None)
        self.assertEqual(m.value("mailplat_connections_open", listener="submission"), 0)
        self.assertEqual(m.value("mailplat_connections_total", listener="submission"), 1)
        self.assertEqual(m.value("mailplat_commands_total", protocol="smtp", command="EHLO"), 1)
        self.assertEqual(m.value("mailplat_commands_total", protocol="smtp", command="MAIL"), 1)

    @defer.inlineCallbacks
    def test_countingPortal(self):
        class IThing(Interface):
            pass

        @implementer(IRealm)
        class Realm:
            def requestAvatar(self, avatarId, mind, *interfaces):
                return interfaces[0], object(), lambda: None

        m = Metrics()
        checker = InMemoryUsernamePasswordDatabaseDontUse(a=b"good")
        portal = CountingPortal(Portal(Realm(), [checker]), "pop3", m)
        yield portal.login(UsernamePassword(b"a", b"good"), None, IThing)
        yield self.assertFailure(portal.login(UsernamePassword(b"a", b"bad"), None, IThing), UnauthorizedLogin)
        self.assertEqual(m.value("mailplat_login_failures_total", protocol="pop3"), 1)

    @defer.inlineCallbacks
    def test_countDeliveries(self):
        class Delivery:
            def deliver(self, ok: bool):
                return defer.succeed(None) if ok else defer.fail(ValueError())

        m = Metrics()
        d = Delivery()
        countDeliveries(d, m)
        yield d.deliver(True)
        yield self.assertFailure(d.deliver(False), ValueError)
        self.assertEqual(m.value("mailplat_deliveries_total", result="ok"), 1)
        self.assertEqual(m.value("mailplat_deliveries_total", result="failed"), 1)

    def test_jsonLogObserver(self) -> None:
        self.assertTrue(callable(jsonLogObserver()))


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
    A real server on loopback counts an SMTP session and serves the page.
    """

    @defer.inlineCallbacks
    def test_page(self):
        dataDir = os.path.abspath(self.mktemp())
        config = Config(dataDir=dataDir, hostname="mx.example.test", store="memory",
                        listeners={"smtp": "tcp:0:interface=127.0.0.1"},
                        metricsListener="tcp:0:interface=127.0.0.1")
        server = Server(config)
        top = server.service()
        top.startService()
        self.addCleanup(top.stopService)
        smtpPort = (yield _portOf(top.getServiceNamed("smtp"))).getHost().port
        metricsPort = (yield _portOf(top.getServiceNamed("metrics"))).getHost().port

        def session():
            with smtplib.SMTP("127.0.0.1", smtpPort, timeout=30) as s:
                s.ehlo("client.test")
                s.noop()

        yield threads.deferToThread(session)
        response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{metricsPort}/metrics".encode())
        body = (yield readBody(response)).decode()
        self.assertEqual(response.headers.getRawHeaders(b"content-type")[0].split(b";")[0], b"text/plain")
        self.assertIn('mailplat_connections_total{listener="smtp"} 1.0', body)
        self.assertIn('mailplat_commands_total{command="EHLO",protocol="smtp"} 1.0', body)
        self.assertIn('mailplat_commands_total{command="NOOP",protocol="smtp"} 1.0', body)
        self.assertIn("mailplat_queue_depth 0.0", body)
