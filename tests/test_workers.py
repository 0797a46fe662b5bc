"""
C{--workers}: a real C{twistd -n mailplat --workers 2} on loopback.  Both
processes accept connections on the shared socket, a worker that dies is
started again, and stopping the parent stops the workers.

Which process served a delivery shows in the Maildir file name it wrote
(C{...P<pid>Q...}), so no log line per connection is needed.
"""

import os
import re
import signal
import smtplib
import urllib.request

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from mailplat.config import Config, workerCount
from mailplat.workers import configFromJSON, configToJSON
from tests.e2e.test_twistd import ADMIN, TWISTD, Child, freePort, spawn


class _Server(Child):
    """
    The twistd process; C{waitFor(pattern, count)} fires once its output
    matched C{pattern} C{count} times.
    """

    def __init__(self) -> None:
        super().__init__()
        self._waits: list = []

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        self._check()

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        super().processEnded(reason)
        waits, self._waits = self._waits, []
        for _, _, d in waits:
            d.errback(AssertionError(self.output.decode("utf-8", "replace")))

    def _check(self) -> None:
        for wait in list(self._waits):
            pattern, count, d = wait
            if len(re.findall(pattern, self.output)) >= count:
                self._waits.remove(wait)
                d.callback(re.findall(pattern, self.output))

    def waitFor(self, pattern: bytes, count: int = 1) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waits.append((pattern, count, d))
        self._check()
        return d


def startServer(case: TestCase, dataDir: str, smtpPort: int, extra: list) -> tuple:
    """
    Start C{twistd mailplat --workers 2} serving SMTP alone on C{smtpPort},
    stopped (SIGTERM) when C{case} ends.

    @return: the L{_Server} and the stop function (a Deferred of its end).
    """
    server = spawn(
        TWISTD + extra + ["--data-dir", dataDir, "--hostname", "mx.example.test", "--workers", "2",
                          "--smtp", f"tcp:{smtpPort}:interface=127.0.0.1", "--submission", "none", "--smtps", "none",
                          "--pop3", "none", "--pop3s", "none", "--imap", "none", "--imaps", "none"],
        _Server(),
    )

    def stop():
        if not server.ended.called:
            server.transport.signalProcess(signal.SIGTERM)
        return server.ended

    case.addCleanup(stop)
    return server, stop


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkersTests(TestCase):
    """
    The parent and one worker serve the same SMTP socket; the parent's
    metrics page counts what both served.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_workersServeRestartAndStop(self):
        dataDir = os.path.abspath(self.mktemp())
        smtpPort = freePort()
        metricsPort = freePort()
        server, stop = startServer(self, dataDir, smtpPort,
                                   ["--metrics", f"tcp:{metricsPort}:interface=127.0.0.1"])
        [worker] = yield server.waitFor(rb"worker ready, pid (\d+)")
        worker = int(worker)
        parent = server.transport.pid
        self.assertNotEqual(worker, parent)

        adder = spawn(ADMIN + ["--data-dir", dataDir, "user", "add", "alice@example.test", "--password-stdin"],
                      Child(stdin=b"s3cret pass\n"))
        self.assertEqual((yield adder.ended), 0, adder.output)
        new = os.path.join(dataDir, "mail", "example.test", "alice", "Maildir", "new")

        def writers():
            return {int(m) for m in re.findall(r"P(\d+)Q", " ".join(os.listdir(new)))}

        def mailUntilBothServed():
            # One connection per message; the kernel hands each to one of
            # the two processes.  Bounded: at most 200 messages.
            for i in range(200):
                with smtplib.SMTP("127.0.0.1", smtpPort, timeout=30) as s:
                    s.sendmail("bob@far.test", ["alice@example.test"], f"Subject: {i}\r\n\r\nhi\r\n".encode())
                if i >= 3 and len(writers()) == 2:
                    return i + 1
            return 200

        sent = yield threads.deferToThread(mailUntilBothServed)
        self.assertEqual(writers(), {parent, worker}, f"after {sent} messages")
        self.assertEqual(len(os.listdir(new)), sent)

        def page():
            with urllib.request.urlopen(f"http://127.0.0.1:{metricsPort}/metrics", timeout=30) as response:
                return set(response.read().decode().splitlines())

        def assertSummed(lines):
            # The connections both processes served, summed on one page.
            for line in (f'mailplat_connections_total{{listener="smtp"}} {float(sent)}',
                         f'mailplat_deliveries_total{{result="ok"}} {float(sent)}',
                         f'mailplat_command_duration_seconds_count{{command="DATA",protocol="smtp"}} {float(sent)}',
                         "mailplat_queue_depth 0.0"):
                self.assertIn(line, lines, sorted(lines))

        lines = yield threads.deferToThread(page)
        assertSummed(lines)
        # Open connections of live processes only, and none are open now
        # (the server may see the last close a moment after the client).
        self.assertTrue({'mailplat_connections_open{listener="smtp"} 0.0',
                         'mailplat_connections_open{listener="smtp"} 1.0'} & lines, sorted(lines))

        # A worker that dies is started again.
        os.kill(worker, signal.SIGKILL)
        pids = yield server.waitFor(rb"worker ready, pid (\d+)", 2)
        again = int(pids[1])
        self.assertNotEqual(again, worker)
        self.assertTrue(_alive(again))
        # The dead worker's counts stay on the page.
        lines = yield threads.deferToThread(page)
        assertSummed(lines)

        # Stopping the parent stops the worker.
        yield stop()
        self.assertFalse(_alive(again))
        self.assertIn(b"Server Shut Down.", server.output)
        self.assertNotIn(b"Traceback", server.output)


class SharedLimitsTests(TestCase):
    """
    The connection limits of a C{--workers 2} server count the connections
    of both processes, and a worker that dies stops counting.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_perAddressLimitAcrossWorkers(self):
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir)
        smtpPort = freePort()
        config = os.path.join(dataDir, "mailplat.toml")
        with open(config, "w") as f:
            f.write("[limits]\nmax_connections_per_address = 2\nexempt_loopback = false\n")
        server, _ = startServer(self, dataDir, smtpPort, ["--config", config])
        [worker] = yield server.waitFor(rb"worker ready, pid (\d+)")
        worker = int(worker)
        adder = spawn(ADMIN + ["--data-dir", dataDir, "user", "add", "alice@example.test", "--password-stdin"],
                      Child(stdin=b"s3cret pass\n"))
        self.assertEqual((yield adder.ended), 0, adder.output)
        new = os.path.join(dataDir, "mail", "example.test", "alice", "Maildir", "new")
        held: dict = {}
        self.addCleanup(lambda: [s.close() for s in held.values()])

        def connect():
            # The refusal is a 421 greeting: smtplib raises SMTPConnectError.
            return smtplib.SMTP("127.0.0.1", smtpPort, timeout=30)

        def servedBy(s):
            # Which process serves this connection: the pid in the name of
            # the Maildir file its message made.
            before = set(os.listdir(new)) if os.path.isdir(new) else set()
            s.sendmail("bob@far.test", ["alice@example.test"], b"Subject: which\r\n\r\nhi\r\n")
            [name] = set(os.listdir(new)) - before
            return int(re.search(r"P(\d+)Q", name).group(1))

        def holdOneOnEach():
            # Keep one connection served by each process open.  A place
            # given back a moment ago may not be free yet: retry.  Bounded.
            for _ in range(200):
                try:
                    s = connect()
                except smtplib.SMTPConnectError:
                    continue
                pid = servedBy(s)
                if pid in held:
                    s.quit()
                else:
                    held[pid] = s
                if len(held) == 2:
                    return

        yield threads.deferToThread(holdOneOnEach)
        self.assertEqual(set(held), {server.transport.pid, worker})

        def attempts(n):
            refused = 0
            for _ in range(n):
                try:
                    connect().quit()
                except smtplib.SMTPConnectError as e:
                    self.assertEqual(e.smtp_code, 421)
                    refused += 1
            return refused

        # One connection in each process is two from this address: every
        # further one is refused, whichever process takes it.
        self.assertEqual((yield threads.deferToThread(attempts, 6)), 6)

        # The worker dies with its connection: from then on, before it is
        # started again (the parent alone serves), only the parent's
        # connection counts; and after.
        os.kill(worker, signal.SIGKILL)
        yield server.waitFor(rb"worker 1 \(pid \d+\) ended")
        held.pop(worker).close()
        self.assertEqual((yield threads.deferToThread(attempts, 1)), 0)
        # The worker started again counts from zero: one more connection
        # is taken (wherever it lands), and then the address is full again.
        # (One at a time, each held: a connection just closed may not have
        # given its place back yet.)
        yield server.waitFor(rb"worker ready, pid (\d+)", 2)
        held["again"] = yield threads.deferToThread(connect)
        self.assertEqual((yield threads.deferToThread(attempts, 4)), 4)
        self.assertNotIn(b"Traceback", server.output)


class WorkerConfigTests(TestCase):
    """
    The configuration a worker gets, and the default count.
    """

    def test_roundTrip(self) -> None:
        config = Config(dataDir="/tmp/d", domains=("a.test",), auth=("mailplat", "memory:x:y"),
                        tlsSNI={"a.test": ("c.pem", "k.pem")}, workers=3)
        self.assertEqual(configFromJSON(configToJSON(config)), config)

    def test_relativeDataDir(self) -> None:
        self.assertEqual(configFromJSON(configToJSON(Config(dataDir="d"))).dataDir, os.path.abspath("d"))

    def test_defaultIsCores(self) -> None:
        self.assertGreaterEqual(workerCount(Config()), 1)
        self.assertEqual(workerCount(Config(workers=1)), 1)
        self.assertEqual(workerCount(Config(workers=4)), 4)
