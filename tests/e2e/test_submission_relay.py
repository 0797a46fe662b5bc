"""
Submission for another domain, end to end: Python's smtplib logs in on
the submission port of a running server, whose file queue takes the
message (its writes and fsyncs in the reactor's thread pool) before the
250, and whose queue runner hands it to the smarthost (our own SMTP server
on loopback, standing in for the far domain's MX).
"""

import os
import smtplib
from typing import Any, List

from twisted.internet import defer, reactor, threads
from twisted.python.threadable import isInIOThread
from twisted.trial.unittest import TestCase

from mailplat.smtp.server import SMTPFactory
from tests.e2e.server import LoopbackServer
from tests.e2e.test_two_nodes import CountingDelivery

PASSWORD = "correct horse battery"
ALICE = "alice@example.test"


class SubmissionRelayTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_submittedMessageRelayed(self) -> None:
        far = CountingDelivery(3)
        mx = reactor.listenTCP(0, SMTPFactory(far, "mx.far.test"), interface="127.0.0.1")
        self.addCleanup(mx.stopListening)
        server = LoopbackServer(os.path.abspath(self.mktemp()), domains=("example.test",),
                                relaySmarthost=f"127.0.0.1:{mx.getHost().port}").start()
        self.addCleanup(server.stop)
        yield server.addUser(ALICE, PASSWORD)
        queue = server.server.queue
        onReactor: List[bool] = []
        writeMeta = queue._writeMeta

        def recording(*args: Any) -> Any:
            onReactor.append(isInIOThread())
            return writeMeta(*args)

        self.patch(queue, "_writeMeta", recording)
        runner = server.server.runner
        runner.startService()
        self.addCleanup(runner.stopService)

        def submit() -> None:
            with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
                s.ehlo("client.example.test")
                # (Plain AUTH is allowed from loopback.)
                s.login(ALICE, PASSWORD)
                for i in range(3):
                    s.sendmail(ALICE, ["bob@far.test"], b"Subject: to far %d\r\n\r\nHello Bob\r\n" % (i,))

        yield threads.deferToThread(submit)
        yield far.arrived
        subjects = sorted(m[3].split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in far.messages)
        self.assertEqual(subjects, [b"to far 0", b"to far 1", b"to far 2"])
        self.assertEqual([m[2] for m in far.messages], [["bob@far.test"]] * 3)
        self.assertTrue(onReactor)
        self.assertNotIn(True, onReactor)
