"""
End-to-end tests with real IMAP clients run as child processes against a
L{LoopbackServer}: mbsync (isync), offlineimap3 and curl.

Each client does a full two-way synchronisation (server to local, a new
local message APPENDed, flag changes both ways, a new folder, a delete
with expunge) and the result is checked through the store and in the
local Maildir.  A client whose binary is not installed is skipped, with
the reason.  Children run under C{reactor.spawnProcess}, each with a time
bound after which it is killed and the test fails.
"""

import os
import shutil
from io import BytesIO
from typing import Dict, List, Optional, Sequence, Tuple

from twisted.internet import defer, error, protocol, reactor
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.e2e.server import LoopbackServer

PASSWORD = "correct horse battery"
ALICE = "alice@example.test"
CLIENT_TIMEOUT = 60.0

MBSYNC = shutil.which("mbsync")
OFFLINEIMAP = shutil.which("offlineimap3") or shutil.which("offlineimap")
CURL = shutil.which("curl")


class ClientFailed(Exception):
    """
    A client exited with a non-zero status or was killed for running too
    long; the message carries its output.
    """


class _Collect(protocol.ProcessProtocol):
    """
    Collect a child's output and fire with C{(status, stdout, stderr)};
    kill it after C{timeout} seconds.
    """

    def __init__(self, timeout: float) -> None:
        self.out: List[bytes] = []
        self.err: List[bytes] = []
        self.done: defer.Deferred = defer.Deferred()
        self._timeout = timeout
        self._killer = None
        self.killed = False

    def connectionMade(self) -> None:
        self._killer = reactor.callLater(self._timeout, self._kill)  # type: ignore[attr-defined]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def _kill(self) -> None:
        self._killer = None
        self.killed = True
        try:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
        except error.ProcessExitedAlready:
            pass

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        code = getattr(reason.value, "exitCode", None)
        self.done.callback((code, b"".join(self.out), b"".join(self.err)))


@defer.inlineCallbacks
def run(argv: Sequence[str], home: str, timeout: float = CLIENT_TIMEOUT, check: bool = True,
        stdin: Optional[bytes] = None) -> defer.Generator:
    """
    Run a client to its end.

    @param argv: the command; C{argv[0]} is an absolute path.
    @param home: C{HOME} for the child (clients keep state under it).
    @param check: fail with L{ClientFailed} on a non-zero status.
    @return: Deferred firing with C{(status, stdout, stderr)}.
    """
    collector = _Collect(timeout)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8"}
    reactor.spawnProcess(collector, argv[0], list(argv), env=env, path=home)  # type: ignore[attr-defined]
    code, out, err = yield collector.done
    if collector.killed:
        raise ClientFailed(f"{argv[0]} ran over {timeout}s: {out!r} {err!r}")
    if check and code != 0:
        raise ClientFailed(f"{argv[0]} exited {code}: {out.decode('utf-8', 'replace')} {err.decode('utf-8', 'replace')}")
    return code, out, err


def message(subject: str, body: str = "Hello") -> bytes:
    """
    A small message in wire form.
    """
    return (
        f"From: Sender <sender@far.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@far.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        f"\r\n{body}\r\n"
    ).encode("utf-8")


def maildirMessages(folder: str) -> Dict[str, Tuple[str, bytes]]:
    """
    The messages of a local Maildir folder: subject to (Maildir flags,
    content).
    """
    found: Dict[str, Tuple[str, bytes]] = {}
    for sub in ("new", "cur"):
        directory = os.path.join(folder, sub)
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as f:
                content = f.read()
            subject = ""
            for line in content.splitlines():
                if line.lower().startswith(b"subject:"):
                    subject = line[8:].strip().decode("utf-8", "replace")
                    break
            flags = name.split(":2,", 1)[1] if ":2," in name else ""
            found[subject] = (flags, content)
    return found


def maildirFile(folder: str, subject: str) -> str:
    """
    The path of the message with C{subject} in a local Maildir folder.
    """
    for sub in ("new", "cur"):
        directory = os.path.join(folder, sub)
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                if f"Subject: {subject}\r\n".encode() in f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"):
                    return path
    raise AssertionError(f"no message {subject!r} in {folder}")


def setMaildirFlags(path: str, flags: str) -> str:
    """
    Give the local message at C{path} the Maildir C{flags} (moving it to
    C{cur}), as a mail reader does; returns the new path.
    """
    directory, name = os.path.split(path)
    base = name.split(":2,", 1)[0]
    target = os.path.join(os.path.dirname(directory), "cur", base + ":2," + "".join(sorted(flags)))
    os.rename(path, target)
    return target


def addMaildirMessage(folder: str, content: bytes, unique: str) -> None:
    """
    Deliver C{content} into a local Maildir folder (creating it), with LF
    line ends as local mail files have.
    """
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    tmp = os.path.join(folder, "tmp", unique)
    with open(tmp, "wb") as f:
        f.write(content.replace(b"\r\n", b"\n"))
    os.rename(tmp, os.path.join(folder, "new", unique))


class RealClientMixin:
    """
    A running server with one user and some mail, and helpers that read
    the server's state straight from its store.
    """

    @defer.inlineCallbacks
    def setUp(self) -> defer.Generator:
        self.dataDir = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        self.home = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(self.home)
        self.server = LoopbackServer(self.dataDir, store="maildir").start()
        self.account = yield self.server.addUser(ALICE, PASSWORD)
        self.addCleanup(lambda: self.server.stop())  # type: ignore[attr-defined]
        inbox = yield self.account.getMailbox("INBOX")
        yield inbox.append(BytesIO(message("first")), ["\\Flagged"])
        yield inbox.append(BytesIO(message("second")), [])
        yield inbox.append(BytesIO(message("third")), ["\\Seen"])

    @property
    def port(self) -> int:
        return self.server.ports["imap"]

    @defer.inlineCallbacks
    def serverState(self, name: str) -> defer.Generator:
        """
        Subject to flags (a set) of every message of mailbox C{name}.
        """
        mailbox = yield self.account.getMailbox(name)
        infos = yield mailbox.listMessages()
        state = {}
        for info in infos:
            f = yield mailbox.openMessage(info.uid)
            try:
                content = f.read()
            finally:
                f.close()
            subject = ""
            for line in content.split(b"\r\n"):
                if line.lower().startswith(b"subject:"):
                    subject = line[8:].strip().decode("utf-8", "replace")
                    break
            state[subject] = set(info.flags)
        return state

    @defer.inlineCallbacks
    def serverFlags(self, name: str, subject: str, flags: List[str], mode: str) -> defer.Generator:
        """
        Change the flags of one server message, as another client would.
        """
        mailbox = yield self.account.getMailbox(name)
        infos = yield mailbox.listMessages()
        for info in infos:
            f = yield mailbox.openMessage(info.uid)
            try:
                content = f.read()
            finally:
                f.close()
            if f"Subject: {subject}\r\n".encode() in content:
                yield mailbox.setFlags([info.uid], flags, mode)
                return
        raise AssertionError(f"no server message {subject!r}")

    @defer.inlineCallbacks
    def serverDelete(self, name: str, subject: str) -> defer.Generator:
        """
        Flag one server message \\Deleted and expunge it.
        """
        mailbox = yield self.account.getMailbox(name)
        yield self.serverFlags(name, subject, ["\\Deleted"], "add")
        yield mailbox.expunge()

    @defer.inlineCallbacks
    def twoWaySync(self, sync, local: str, inboxDir: str, folderDir, trashFlag: bool = True) -> defer.Generator:
        """
        The scenario every synchronising client runs.

        @param sync: no-argument callable returning a Deferred that runs
            the client once.
        @param local: the local mail root.
        @param inboxDir: the local Maildir of INBOX.
        @param folderDir: callable from a folder name to its local Maildir.
        @param trashFlag: delete locally by the Maildir T (trashed) flag,
            as mutt does before a sync; otherwise by removing the file
            (what offlineimap propagates as a deletion).
        """
        # 1. server -> local.
        yield sync()
        got = maildirMessages(inboxDir)
        self.assertEqual(sorted(got), ["first", "second", "third"])  # type: ignore[attr-defined]
        self.assertIn("F", got["first"][0])  # type: ignore[attr-defined]
        self.assertIn("S", got["third"][0])  # type: ignore[attr-defined]
        self.assertNotIn("S", got["second"][0])  # type: ignore[attr-defined]
        self.assertTrue(got["first"][1].replace(b"\r\n", b"\n").endswith(b"\n\nHello\n"))  # type: ignore[attr-defined]

        # 2. local changes: a new message, a flag, a new folder; a server
        # flag change.
        addMaildirMessage(inboxDir, message("local new", "from the laptop"), "1700000000.1.laptop")
        setMaildirFlags(maildirFile(inboxDir, "second"), "S")
        addMaildirMessage(folderDir("Projects"), message("project plan"), "1700000000.2.laptop")
        yield self.serverFlags("INBOX", "third", ["\\Answered"], "add")
        yield sync()
        state = yield self.serverState("INBOX")
        self.assertEqual(sorted(state), ["first", "local new", "second", "third"])  # type: ignore[attr-defined]
        self.assertIn("\\Seen", state["second"])  # type: ignore[attr-defined]
        entries = yield self.account.listMailboxes()
        self.assertIn("Projects", [e.name for e in entries])  # type: ignore[attr-defined]
        projects = yield self.serverState("Projects")
        self.assertEqual(list(projects), ["project plan"])  # type: ignore[attr-defined]
        mailbox = yield self.account.getMailbox("INBOX")
        f = yield mailbox.openMessage((yield mailbox.listMessages())[-1].uid)
        try:
            self.assertIn(b"\r\n\r\nfrom the laptop\r\n", f.read())  # type: ignore[attr-defined]
        finally:
            f.close()
        got = maildirMessages(inboxDir)
        self.assertIn("R", got["third"][0])  # type: ignore[attr-defined]

        # 3. deletes both ways: one locally (trashed), one on the server.
        if trashFlag:
            setMaildirFlags(maildirFile(inboxDir, "first"), "FT")
        else:
            os.remove(maildirFile(inboxDir, "first"))
        yield self.serverDelete("INBOX", "second")
        yield sync()
        state = yield self.serverState("INBOX")
        self.assertEqual(sorted(state), ["local new", "third"])  # type: ignore[attr-defined]
        got = maildirMessages(inboxDir)
        self.assertEqual(sorted(got), ["local new", "third"])  # type: ignore[attr-defined]

        # 4. nothing left to do: a further run changes nothing.
        yield sync()
        state2 = yield self.serverState("INBOX")
        self.assertEqual(state2, state)  # type: ignore[attr-defined]
        self.assertEqual(sorted(maildirMessages(inboxDir)), ["local new", "third"])  # type: ignore[attr-defined]


class MbsyncTests(RealClientMixin, TestCase):
    """
    mbsync (isync) synchronising a local Maildir with the server.
    """

    if MBSYNC is None:
        skip = "mbsync (isync) is not installed"

    def config(self, local: str) -> str:
        path = os.path.join(self.home, "mbsyncrc")
        with open(path, "w") as f:
            f.write(
                f"IMAPAccount test\nHost 127.0.0.1\nPort {self.port}\nUser {ALICE}\nPass \"{PASSWORD}\"\n"
                "SSLType None\nAuthMechs LOGIN PLAIN\n\n"
                "IMAPStore remote\nAccount test\n\n"
                f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
                "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nRemove None\n"
                "Expunge Both\nSync All\nSyncState *\n"
            )
        return path

    @defer.inlineCallbacks
    def test_twoWaySync(self) -> defer.Generator:
        local = os.path.join(self.home, "Mail")
        os.makedirs(local)
        config = self.config(local)

        def sync() -> defer.Deferred:
            return run([MBSYNC, "-c", config, "-a"], self.home)  # type: ignore[list-item]

        yield self.twoWaySync(sync, local, os.path.join(local, "INBOX"), lambda name: os.path.join(local, name))


class OfflineIMAPTests(RealClientMixin, TestCase):
    """
    offlineimap3 synchronising a local Maildir with the server.
    """

    if OFFLINEIMAP is None:
        skip = "offlineimap3 is not installed (apt-get install offlineimap3)"

    def config(self, local: str) -> str:
        path = os.path.join(self.home, "offlineimaprc")
        with open(path, "w") as f:
            f.write(
                "[general]\naccounts = test\nmetadata = " + os.path.join(self.home, "meta") + "\n"
                "ui = quiet\nsocktimeout = 30\n\n"
                "[Account test]\nlocalrepository = local\nremoterepository = remote\n\n"
                f"[Repository local]\ntype = Maildir\nlocalfolders = {local}\nsep = /\n\n"
                f"[Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\nremoteport = {self.port}\n"
                f"remoteuser = {ALICE}\nremotepass = {PASSWORD}\nssl = no\nstarttls = no\n"
                "auth_mechanisms = PLAIN, LOGIN\nexpunge = yes\ncreatefolders = True\n"
            )
        return path

    @defer.inlineCallbacks
    def test_twoWaySync(self) -> defer.Generator:
        local = os.path.join(self.home, "Mail")
        os.makedirs(local)
        config = self.config(local)

        def sync() -> defer.Deferred:
            return run([OFFLINEIMAP, "-c", config, "-o", "-u", "quiet"], self.home)  # type: ignore[list-item]

        yield self.twoWaySync(
            sync, local, os.path.join(local, "INBOX"), lambda name: os.path.join(local, name), trashFlag=False
        )


class CurlTests(RealClientMixin, TestCase):
    """
    curl's IMAP client: list, fetch by UID, upload (APPEND), STORE flags,
    and a custom EXPUNGE, each checked through the store.
    """

    if CURL is None:
        skip = "curl is not installed"

    def curl(self, path: str, *extra: str, check: bool = True) -> defer.Deferred:
        url = f"imap://127.0.0.1:{self.port}/{path}"
        argv = [CURL, "--silent", "--show-error", "--max-time", "30", "--user", f"{ALICE}:{PASSWORD}", *extra, url]
        return run(argv, self.home, check=check)  # type: ignore[list-item]

    @defer.inlineCallbacks
    def test_listFetchAppendStoreExpunge(self) -> defer.Generator:
        code, out, err = yield self.curl("")
        self.assertIn(b'"INBOX"', out)
        code, out, err = yield self.curl("INBOX;UID=2")
        self.assertEqual(out.replace(b"\r\n", b"\n"), message("second").replace(b"\r\n", b"\n"))
        # Fetching the body with BODY[] sets \Seen.
        state = yield self.serverState("INBOX")
        self.assertIn("\\Seen", state["second"])

        upload = os.path.join(self.home, "upload.eml")
        with open(upload, "wb") as f:
            f.write(message("uploaded", "by curl"))
        yield self.curl("Archive", "-X", "CREATE Archive", check=False)
        yield self.curl("Archive", "-T", upload)
        archive = yield self.serverState("Archive")
        # curl APPENDs with the \\Seen flag.
        self.assertEqual(archive, {"uploaded": {"\\Seen"}})

        yield self.curl("INBOX", "-X", "STORE 1 +FLAGS (\\Deleted)")
        state = yield self.serverState("INBOX")
        self.assertIn("\\Deleted", state["first"])
        yield self.curl("INBOX", "-X", "EXPUNGE")
        state = yield self.serverState("INBOX")
        self.assertEqual(sorted(state), ["second", "third"])

        code, out, err = yield self.curl("INBOX?SUBJECT%20third")
        self.assertIn(b"* SEARCH 2", out)
