"""
The command-line contract, end to end: C{twistd -n mailplat} in a child
process, users added with the C{mailplat} command while it runs, mail sent
and read back with Python's clients; and a bad option stopping the start
with one line.
"""

import imaplib
import os
import signal
import smtplib
import socket
import sys

from twisted.internet import defer, protocol, reactor, threads
from twisted.trial.unittest import TestCase

from mailplat.imap.index import indexPath

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "mailplat"]
ADMIN = [sys.executable, "-c", "from mailplat.admin.cli import main; main()"]


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 free at the moment of asking.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child(protocol.ProcessProtocol):
    """
    A child process whose output is kept; C{ready} fires once every
    expected listener has logged that it started, C{ended} with the exit
    code.
    """

    def __init__(self, listeners: int = 0, stdin: bytes = b"") -> None:
        self.output = b""
        self.listeners = listeners
        self.stdin = stdin
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.listeners and not self.ready.called and self.output.count(b"starting on") >= self.listeners:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if self.listeners and not self.ready.called:
            self.ready.errback(AssertionError(self.output.decode("utf-8", "replace")))
        self.reason = reason.value
        self.ended.callback(reason.value.exitCode)


def spawn(args: list, child: Child) -> Child:
    env = dict(os.environ, PYTHONPATH=HERE)
    reactor.spawnProcess(child, args[0], args, env=env, path=HERE)
    return child


class TwistdTests(TestCase):
    """
    The real server process.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_serveAndUse(self):
        dataDir = os.path.abspath(self.mktemp())
        smtpPort, imapPort, pop3Port = freePort(), freePort(), freePort()
        server = spawn(
            TWISTD + ["--data-dir", dataDir, "--hostname", "mx.example.test",
                      "--smtp", f"tcp:{smtpPort}:interface=127.0.0.1", "--imap", f"tcp:{imapPort}:interface=127.0.0.1",
                      "--pop3", f"tcp:{pop3Port}:interface=127.0.0.1",
                      "--submission", "none", "--smtps", "none", "--pop3s", "none", "--imaps", "none"],
            Child(listeners=3),
        )

        def stop():
            if not server.ended.called:
                server.transport.signalProcess(signal.SIGTERM)
            return server.ended

        self.addCleanup(stop)
        yield server.ready

        adder = spawn(ADMIN + ["--data-dir", dataDir, "user", "add", "alice@example.test", "--password-stdin"], Child(stdin=b"s3cret pass\n"))
        self.assertEqual((yield adder.ended), 0, adder.output)
        lister = spawn(ADMIN + ["--data-dir", dataDir, "user", "list"], Child())
        self.assertEqual((yield lister.ended), 0)
        self.assertEqual(lister.output, b"alice@example.test\n")

        def mail():
            with smtplib.SMTP("127.0.0.1", smtpPort, timeout=30) as s:
                s.sendmail("bob@far.test", ["alice@example.test"], b"Subject: via twistd\r\n\r\nhi\r\n")
            i = imaplib.IMAP4("127.0.0.1", imapPort, timeout=30)
            try:
                i.login("alice@example.test", "s3cret pass")
                i.select("INBOX")
                # (Answered from the message index, which the search makes.)
                assert i.search(None, "TEXT", "twistd")[1] == [b"1"]
                return i.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1]
            finally:
                i.logout()

        subject = yield threads.deferToThread(mail)
        self.assertEqual(subject.strip(), b"Subject: via twistd")
        # Deleting the user deletes the index of its mail too.
        index = indexPath(os.path.join(dataDir, "index"), "alice@example.test")
        self.assertTrue(os.path.exists(index))
        deleter = spawn(ADMIN + ["--data-dir", dataDir, "user", "del", "alice@example.test"], Child())
        self.assertEqual((yield deleter.ended), 0, deleter.output)
        self.assertEqual([name for name in os.listdir(os.path.dirname(index)) if name.startswith(os.path.basename(index))], [])
        yield stop()
        # twistd stops cleanly on SIGTERM, then reports the signal as its
        # exit status (as Twisted does since 22.x).
        self.assertIn(b"Server Shut Down.", server.output)
        # Mail from loopback is not checked against DNS (SPF, DMARC): the
        # test talks to nothing off this machine.
        self.assertNotIn(b"Resolver added", server.output)
        self.assertNotIn(b"Traceback", server.output)

    @defer.inlineCallbacks
    def test_badOption(self):
        """
        A bad endpoint stops the start with one line naming it.
        """
        child = spawn(TWISTD + ["--data-dir", os.path.abspath(self.mktemp()), "--smtp", "tcp:nonsense"], Child())
        code = yield child.ended
        self.assertNotEqual(code, 0)
        lines = child.output.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, child.output)
        self.assertIn("--smtp", lines[0])
        self.assertNotIn("Traceback", child.output.decode())

    @defer.inlineCallbacks
    def test_badConfigKey(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[server]\nstore = 'maildir'\nfoo = 1\n")
        child = spawn(TWISTD + ["--config", path], Child())
        self.assertNotEqual((yield child.ended), 0)
        lines = child.output.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, child.output)
        self.assertIn(path, lines[0])
        self.assertIn("server.foo", lines[0])

    @defer.inlineCallbacks
    def test_adminErrors(self):
        dataDir = os.path.abspath(self.mktemp())
        child = spawn(ADMIN + ["--data-dir", dataDir, "user", "add", "not-an-address", "--password-stdin"], Child(stdin=b"x\n"))
        self.assertEqual((yield child.ended), 1)
        self.assertIn(b"not-an-address", child.output)
        self.assertEqual(len(child.output.strip().splitlines()), 1, child.output)
        child = spawn(ADMIN + ["--data-dir", dataDir, "user", "del", "ghost@example.test"], Child())
        self.assertEqual((yield child.ended), 1)
        self.assertIn(b"no such user", child.output)
        child = spawn(ADMIN + ["--data-dir", dataDir, "check-config"], Child())
        self.assertEqual((yield child.ended), 0, child.output)
        self.assertIn(b"configuration OK", child.output)
