"""
Dropping privileges, end to end: C{twistd -u USER -g GROUP mailplat} run as
root binds its listeners first (as root) and then serves as that user, from
a data directory the user owns.  Skipped unless the tests run as root.

Free high ports are used (binding a port below 1024 as root works the same
way: twistd binds in C{privilegedStartService}, before the switch).
"""

import os
import pwd
import shutil
import signal
import smtplib
import sys
import tempfile
from typing import Optional

from twisted.internet import defer, threads
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e.test_twistd import Child, freePort, spawn

RUN_AS = "nobody"


def _twistd(uid: int, gid: int) -> list:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "-u", str(uid), "-g", str(gid), "mailplat"]


def _runnableBy(path: str, uid: int, gid: int) -> bool:
    """
    Whether user C{uid} (group C{gid}) can reach and run C{path}: the
    execute bit that applies to it on the file and every directory above.
    """
    path = os.path.abspath(path)
    steps = [path]
    while os.path.dirname(steps[-1]) != steps[-1]:
        steps.append(os.path.dirname(steps[-1]))
    for step in steps:
        st = os.stat(step)
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return False
    return True


def _uids(pid: int) -> list:
    """
    The real, effective, saved and file-system uids of process C{pid}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return [int(n) for n in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def _wired() -> bool:
    """
    Whether C{makeService} runs the start-time checks and builds the
    server as the run-as user (L{mailplat.auth.startup}).
    """
    from mailplat import service

    with open(service.__file__) as f:
        text = f.read()
    return "startupChecks" in text and "runAs" in text


class PrivilegeDropTests(TestCase):
    """
    The server as an unprivileged user.
    """

    timeout = 120

    def setUp(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("needs root: twistd -u/-g only switches users when started as root")
        try:
            entry = pwd.getpwnam(RUN_AS)
        except KeyError:
            raise SkipTest(f"no {RUN_AS!r} user on this system")
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        # Under /tmp, not _trial_temp: every directory above it must be
        # searchable by the user.
        self.top = tempfile.mkdtemp(prefix="mailplat-priv-")
        os.chmod(self.top, 0o755)
        self.addCleanup(shutil.rmtree, self.top, True)
        self.dataDir = os.path.join(self.top, "data")

    def start(self, *extra: str, listeners: int = 1, workers: int = 1, child: Optional[Child] = None) -> Child:
        child = spawn(_twistd(self.uid, self.gid) + ["--data-dir", self.dataDir, "--workers", str(workers),
                                                     "--hostname", "mx.example.test", *extra],
                      child or Child(listeners=listeners))

        def stop() -> defer.Deferred:
            if not child.ended.called:
                child.transport.signalProcess(signal.SIGTERM)
            return child.ended

        self.addCleanup(stop)
        return child

    @defer.inlineCallbacks
    def test_servesAsUser(self):
        """
        With the data directory chowned to the user, twistd binds, switches
        to the user (every uid of the serving process is the user's) and
        accepts mail.
        """
        os.makedirs(self.dataDir)
        os.chown(self.dataDir, self.uid, self.gid)
        port = freePort()
        none = ["--submission", "none", "--smtps", "none", "--pop3", "none", "--pop3s", "none",
                "--imap", "none", "--imaps", "none"]
        server = self.start("--smtp", f"tcp:{port}:interface=127.0.0.1", *none)
        yield server.ready

        def greet() -> bytes:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                return s.ehlo()[1]

        # The listener logs "starting on" while twistd is still root (it
        # binds before switching); an answer comes from the running
        # reactor, which twistd starts only after the switch.
        banner = yield threads.deferToThread(greet)
        self.assertIn(b"mx.example.test", banner)
        self.assertEqual(_uids(server.transport.pid), [self.uid] * 4)
        self.assertNotIn(b"Traceback", server.output)
        if _wired():
            # Whatever the server made in its data directory belongs to
            # the user, so it can keep writing there.
            for root, dirs, files in os.walk(self.dataDir):
                for name in dirs + files:
                    path = os.path.join(root, name)
                    self.assertEqual(os.lstat(path).st_uid, self.uid, path)

    @defer.inlineCallbacks
    def test_workersServeAsUser(self):
        """
        With two worker processes, the worker the parent starts after the
        switch serves as the user too: the files the processes share
        (the connection counts) were made for it, and mail is accepted.
        """
        from tests.test_workers import _Server

        for path in (sys.executable, os.path.realpath(sys.executable)):
            if not _runnableBy(path, self.uid, self.gid):
                raise SkipTest(f"{RUN_AS} cannot run {path} (a directory above it is closed to others), "
                               "so the parent could not start a worker as that user")

        os.makedirs(self.dataDir)
        os.chown(self.dataDir, self.uid, self.gid)
        port = freePort()
        none = ["--submission", "none", "--smtps", "none", "--pop3", "none", "--pop3s", "none",
                "--imap", "none", "--imaps", "none"]
        server = self.start("--smtp", f"tcp:{port}:interface=127.0.0.1", *none, workers=2, child=_Server())
        [worker] = yield server.waitFor(rb"worker ready, pid (\d+)")
        self.assertEqual(_uids(int(worker)), [self.uid] * 4)

        def greet() -> bytes:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                return s.ehlo()[1]

        for _ in range(4):
            self.assertIn(b"mx.example.test", (yield threads.deferToThread(greet)))
        self.assertNotIn(b"Traceback", server.output)
        self.assertNotIn(b"starting it again", server.output)
        for name in os.listdir(os.path.join(self.dataDir, "connections")):
            self.assertEqual(os.lstat(os.path.join(self.dataDir, "connections", name)).st_uid, self.uid, name)

    @defer.inlineCallbacks
    def test_dataDirNotWritable(self):
        """
        A data directory the user cannot write stops the start with one
        line naming it.
        """
        if not _wired():
            raise SkipTest("mailplat.service.makeService does not call mailplat.auth.startup.startupChecks yet")
        os.makedirs(self.dataDir)
        os.chmod(self.dataDir, 0o755)
        child = self.start("--smtp", f"tcp:{freePort()}:interface=127.0.0.1", listeners=0)
        code = yield child.ended
        self.assertNotEqual(code, 0)
        lines = child.output.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, child.output)
        self.assertIn(repr(self.dataDir), lines[0])
        self.assertNotIn("Traceback", child.output.decode())
