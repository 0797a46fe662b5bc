"""
One user cannot reach another user's mail: not through IMAP mailbox names
(C{../bob}, absolute paths, C{~bob}, NUL, modified-UTF-7 tricks), not
through POP3, and not through symbolic links planted inside a Maildir.

The protocol tests run over real loopback sockets against
L{LoopbackServer}; the symbolic-link tests drive the Maildir store
directly.
"""

import io
import os
import socket
from typing import Dict, List, Tuple

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from mailplat.errors import MailboxError, StoreError
from mailplat.store.maildir import MaildirStore
from tests.e2e.server import LoopbackServer

PASSWORD = "correct horse battery"
ALICE = "alice@example.test"
BOB = "bob@example.test"
BOB_SECRET = b"BOB-SECRET-7d1f"
OUTSIDE_SECRET = b"OUTSIDE-SECRET-52aa"

MESSAGE = (
    b"From: carol@far.test\r\nTo: bob@example.test\r\nSubject: private\r\n"
    b"Message-ID: <secret@far.test>\r\n\r\n" + BOB_SECRET + b"\r\n"
)


def snapshot(top: str, skip: str = "") -> Dict[str, Tuple[str, int, bytes]]:
    """
    Every file, directory and link under C{top} (except under C{skip}):
    path to (kind, size, content of a small file).
    """
    seen: Dict[str, Tuple[str, int, bytes]] = {}
    for directory, dirs, files in os.walk(top):
        if skip and (directory == skip or directory.startswith(skip + os.sep)):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(directory, name)
            if skip and (path == skip or path.startswith(skip + os.sep)):
                continue
            st = os.lstat(path)
            if os.path.islink(path):
                seen[path] = ("link", 0, os.readlink(path).encode())
            elif os.path.isdir(path):
                seen[path] = ("dir", 0, b"")
            else:
                with open(path, "rb") as f:
                    seen[path] = ("file", st.st_size, f.read(4096))
    return seen


class LineClient:
    """
    A blocking client on a real socket, for the protocol tests (run in a
    thread while the reactor serves).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buffer = b""
        self.transcript = b""

    def readLine(self) -> bytes:
        """
        One line, CRLF included.
        """
        for _ in range(100000):
            if b"\r\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                self.transcript += line + b"\r\n"
                return line + b"\r\n"
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("closed by the server")
            self.buffer += more
        raise AssertionError("no line")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class IMAPClient(LineClient):
    """
    Tags commands and collects the lines up to the tagged reply.
    """

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.counter = 0
        self.readLine()

    def command(self, *parts: bytes) -> Tuple[bytes, List[bytes]]:
        """
        Send a command made of C{parts}: a part that is a tuple C{(b"lit",
        data)} is sent as a synchronising literal.  Returns the tagged
        line and the untagged lines before it.
        """
        self.counter += 1
        tag = b"t%d" % self.counter
        pending = tag
        for part in parts:
            if isinstance(part, tuple):
                data = part[1]
                self.send(pending + b" {%d}\r\n" % len(data))
                line = self.readLine()
                if not line.startswith(b"+"):
                    return line, []
                pending = data
            else:
                pending += b" " + part
        self.send(pending + b"\r\n")
        untagged: List[bytes] = []
        for _ in range(10000):
            line = self.readLine()
            if line.startswith(tag + b" "):
                return line, untagged
            untagged.append(line)
        raise AssertionError("no tagged reply")


class ProtocolIsolationTests(TestCase):
    """
    Alice, logged in, tries every path-like name at Bob's mail; Bob's
    files do not change and his secret never reaches her.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.dataDir = os.path.abspath(self.mktemp())
        # Many hostile names in one session: each BAD counts towards the
        # per-session error limit, which is not what is tested here.
        self.server = LoopbackServer(self.dataDir, store="maildir", maxErrors=1000).start()
        self.addCleanup(lambda: self.server.stop())
        alice = yield self.server.addUser(ALICE, PASSWORD)
        bob = yield self.server.addUser(BOB, PASSWORD)
        inbox = yield bob.getMailbox("INBOX")
        yield inbox.append(io.BytesIO(MESSAGE), ())
        yield bob.createMailbox("Secret")
        secret = yield bob.getMailbox("Secret")
        yield secret.append(io.BytesIO(MESSAGE), ())
        self.alicePath = os.path.dirname(alice.path) if os.path.basename(alice.path) == "Maildir" else alice.path
        self.mailRoot = os.path.join(self.dataDir, "mail")

    def outside(self) -> Dict[str, Tuple[str, int, bytes]]:
        """
        Everything in the mail root that is not Alice's.
        """
        return snapshot(self.mailRoot, skip=self.alicePath)

    HOSTILE_NAMES: List[bytes] = [
        b"../bob@example.test",
        b"../bob",
        b"../../example.test/bob/Maildir",
        b"INBOX/../../bob",
        b"..",
        b".",
        b"/",
        b"/etc",
        b"/tmp/x",
        b"~bob",
        b"~bob/INBOX",
        b"~/../bob",
        b"bob@example.test/INBOX",
        b"#shared/bob",
        b"#user/bob",
        b"&AC4ALg-",  # ".." in modified UTF-7
        b"&AC4ALgAv-bob",  # "../bob"
        b"&AC8-etc",  # "/etc"
        b"&AFw-bob",  # backslash
        b"&AAA-",  # NUL
        b".Secret",
        b"..Secret",
        b"Secret",
        b"INBOX.Secret",
        b"%2e%2e/bob",
        b"..%2fbob",
        b"\\..\\bob",
    ]

    @defer.inlineCallbacks
    def test_imapNames(self):
        """
        SELECT, EXAMINE, STATUS, APPEND, CREATE, RENAME, DELETE and LIST
        with hostile names touch nothing outside Alice's account and show
        her nothing of Bob's.
        """
        before = self.outside()

        def session() -> bytes:
            c = IMAPClient(self.server.ports["imap"])
            c.command(b"LOGIN", b'"%s"' % ALICE.encode(), b'"%s"' % PASSWORD.encode())
            for name in self.HOSTILE_NAMES:
                quoted = b'"' + name.replace(b"\\", b"\\\\") + b'"'
                for parts in (
                    (b"SELECT", quoted),
                    (b"EXAMINE", quoted),
                    (b"STATUS", quoted, b"(MESSAGES UIDNEXT)"),
                    (b"APPEND", quoted, (b"lit", b"Subject: x\r\n\r\nplanted\r\n")),
                    (b"DELETE", quoted),
                    (b"RENAME", b"INBOX", quoted),
                    (b"LIST", quoted, b'"*"'),
                    (b"LIST", b'""', quoted),
                    (b"SUBSCRIBE", quoted),
                ):
                    c.command(*parts)
                # The name as a literal too (NUL and 8-bit arrive intact).
                c.command(b"SELECT", (b"lit", name))
            for name in (b"../bob\x00", b"a\x00../../bob", b"\x00", b"\xff\xfe../bob", b"INBOX\x00/../bob"):
                c.command(b"SELECT", (b"lit", name))
                c.command(b"CREATE", (b"lit", name))
                c.command(b"APPEND", (b"lit", name), (b"lit", b"Subject: y\r\n\r\nplanted\r\n"))
            c.command(b"LIST", b'""', b'"*"')
            c.command(b"LIST", b'"../"', b'"*"')
            c.command(b"LIST", b'"/"', b'"*"')
            c.command(b"LIST", b'"~bob/"', b'"*"')
            c.command(b"LOGOUT")
            c.close()
            return c.transcript

        transcript = yield threads.deferToThread(session)
        self.assertIn(b"Logged in", transcript)
        self.assertNotIn(BOB_SECRET, transcript)
        self.assertEqual(self.outside(), before)
        # Whatever Alice made lies inside her own account.
        for path in snapshot(self.alicePath):
            self.assertTrue(os.path.realpath(path).startswith(os.path.realpath(self.alicePath) + os.sep), path)

    test_imapNames.timeout = 120  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_imapSecretNotSelectable(self):
        """
        Bob's folder C{Secret} is not Alice's: selecting it fails, and her
        own C{Secret}, once made, is empty.
        """

        def session() -> List[bytes]:
            c = IMAPClient(self.server.ports["imap"])
            c.command(b"LOGIN", ALICE.encode(), b'"%s"' % PASSWORD.encode())
            first, _ = c.command(b"SELECT", b"Secret")
            c.command(b"CREATE", b"Secret")
            second, untagged = c.command(b"SELECT", b"Secret")
            c.close()
            return [first, second] + untagged

        lines = yield threads.deferToThread(session)
        self.assertIn(b" NO ", lines[0])
        self.assertIn(b" OK ", lines[1])
        self.assertIn(b"* 0 EXISTS\r\n", lines)

    @defer.inlineCallbacks
    def test_imapLoginNames(self):
        """
        Path-like login names with Bob's or Alice's password log nobody in.
        """
        names = [b"../bob@example.test", b"bob@example.test/../alice@example.test", b"alice@example.test/../bob",
                 b"bob@example.test\x00", b"BOB@EXAMPLE.TEST/", b"~bob", b"bob", b"example.test/bob"]

        def session() -> List[bytes]:
            results = []
            for name in names:
                c = IMAPClient(self.server.ports["imap"])
                tagged, _ = c.command(b"LOGIN", (b"lit", name), b'"%s"' % PASSWORD.encode())
                results.append(tagged)
                c.close()
            return results

        results = yield threads.deferToThread(session)
        for name, tagged in zip(names, results):
            self.assertNotIn(b" OK ", tagged, name)

    @defer.inlineCallbacks
    def test_pop3(self):
        """
        Over POP3 Alice sees her maildrop only; a second USER/PASS in the
        TRANSACTION state, or path-like login names, do not switch to Bob.
        """

        def session() -> bytes:
            c = LineClient(self.server.ports["pop3"])
            c.readLine()
            for name in (b"../bob@example.test", b"bob@example.test/../alice@example.test", b"~bob", b"/bob"):
                c.send(b"USER " + name + b"\r\n")
                c.readLine()
                c.send(b"PASS " + PASSWORD.encode() + b"\r\n")
                self.assertFalse(c.readLine().startswith(b"+OK"), name)
            c.send(b"USER " + ALICE.encode() + b"\r\n")
            c.readLine()
            c.send(b"PASS " + PASSWORD.encode() + b"\r\n")
            self.assertTrue(c.readLine().startswith(b"+OK"))
            for command in (b"USER " + BOB.encode(), b"PASS " + PASSWORD.encode(), b"APOP bob@example.test 0",
                            b"RETR 1", b"RETR 0", b"RETR -1", b"RETR 99999999999999999999", b"TOP 1 10",
                            b"UIDL", b"LIST", b"RETR ../bob"):
                c.send(command + b"\r\n")
                line = c.readLine()
                if line.startswith(b"+OK") and command.split()[0] in (b"UIDL", b"LIST", b"RETR", b"TOP"):
                    for _ in range(10000):
                        if c.readLine() == b".\r\n":
                            break
            c.send(b"QUIT\r\n")
            c.readLine()
            c.close()
            return c.transcript

        transcript = yield threads.deferToThread(session)
        self.assertNotIn(BOB_SECRET, transcript)

#: The Maildir store follows symbolic links planted in an account (reported
#: with issue 6; remove the marks below once the store refuses them).


class MaildirSymlinkTests(TestCase):
    """
    Symbolic links planted inside a Maildir (by a user with a shell, a
    restored backup, another program) are not followed to read, write or
    delete outside the account.
    """

    @defer.inlineCallbacks
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.root = os.path.join(base, "mail")
        self.outsideDir = os.path.join(base, "outside")
        os.makedirs(self.outsideDir)
        self.outsideFile = os.path.join(self.outsideDir, "secret.txt")
        with open(self.outsideFile, "wb") as f:
            f.write(b"Subject: outside\r\n\r\n" + OUTSIDE_SECRET + b"\r\n")
        self.store = MaildirStore(self.root)
        self.addCleanup(self.store.close)
        self.alice = yield self.store.getAccount(ALICE, create=True)
        self.bob = yield self.store.getAccount(BOB, create=True)
        inbox = yield self.bob.getMailbox("INBOX")
        yield inbox.append(io.BytesIO(MESSAGE), ())
        self.bobBefore = snapshot(self.root, skip=self.alice.path)

    def bobUnchanged(self) -> None:
        self.assertEqual(snapshot(self.root, skip=self.alice.path), self.bobBefore)

    @defer.inlineCallbacks
    def readAll(self, name: str = "INBOX") -> "defer.Deferred[bytes]":
        """
        Every message of Alice's mailbox C{name}, concatenated.
        """
        mailbox = yield self.alice.getMailbox(name)
        infos = yield mailbox.listMessages()
        out = b""
        for info in infos:
            try:
                f = yield mailbox.openMessage(info.uid)
            except (MailboxError, StoreError):
                continue
            with f:
                out += f.read()
        return out

    def plantFolder(self, target: str, name: str = ".Evil") -> None:
        os.symlink(target, os.path.join(self.alice.path, name))

    @defer.inlineCallbacks
    def test_folderLinkNotListed(self):
        """
        A folder directory that is a link to Bob's Maildir is not listed.
        """
        self.plantFolder(self.bob.path)
        entries = yield self.alice.listMailboxes()
        self.assertNotIn("Evil", [e.name for e in entries])

    @defer.inlineCallbacks
    def test_folderLinkNotSelected(self):
        """
        Nor can it be opened by name.
        """
        self.plantFolder(self.bob.path)
        try:
            data = yield self.readAll("Evil")
        except (MailboxError, StoreError):
            data = b""
        self.assertNotIn(BOB_SECRET, data)

    @defer.inlineCallbacks
    def test_folderLinkNotDeleted(self):
        """
        Deleting it does not delete Bob's mail.
        """
        self.plantFolder(self.bob.path)
        try:
            yield self.alice.deleteMailbox("Evil")
        except (MailboxError, StoreError):
            pass
        self.bobUnchanged()

    @defer.inlineCallbacks
    def test_folderLinkNotWritten(self):
        """
        Nor can mail be appended through it.
        """
        self.plantFolder(self.bob.path)
        try:
            mailbox = yield self.alice.getMailbox("Evil")
            yield mailbox.append(io.BytesIO(b"Subject: planted\r\n\r\nplanted\r\n"), ())
        except (MailboxError, StoreError):
            pass
        self.bobUnchanged()

    @defer.inlineCallbacks
    def test_folderLinkRenamed(self):
        """
        Renaming a linked folder does not move Bob's Maildir.
        """
        self.plantFolder(self.bob.path)
        try:
            yield self.alice.renameMailbox("Evil", "Mine")
        except (MailboxError, StoreError):
            pass
        self.bobUnchanged()

    @defer.inlineCallbacks
    def test_messageLinkNotRead(self):
        """
        A message file that is a link to a file outside the account is not
        read.
        """
        os.symlink(self.outsideFile, os.path.join(self.alice.path, "cur", "1700000000.M1P1.evil:2,S"))
        os.symlink(self.outsideFile, os.path.join(self.alice.path, "new", "1700000001.M2P1.evil"))
        data = yield self.readAll()
        self.assertNotIn(OUTSIDE_SECRET, data)

    @defer.inlineCallbacks
    def test_messageLinkToBob(self):
        """
        Nor is a link to one of Bob's messages.
        """
        bobCur = [os.path.join(self.bob.path, sub, n) for sub in ("new", "cur")
                  for n in os.listdir(os.path.join(self.bob.path, sub))]
        self.assertEqual(len(bobCur), 1)
        os.symlink(bobCur[0], os.path.join(self.alice.path, "cur", "1700000002.M3P1.evil:2,"))
        data = yield self.readAll()
        self.assertNotIn(BOB_SECRET, data)

    @defer.inlineCallbacks
    def test_tmpLinkNotWritten(self):
        """
        A C{tmp} directory that is a link outside the account does not
        receive the messages appended to the mailbox.
        """
        os.rmdir(os.path.join(self.alice.path, "tmp"))
        os.symlink(self.outsideDir, os.path.join(self.alice.path, "tmp"))
        inbox = yield self.alice.getMailbox("INBOX")
        try:
            yield inbox.append(io.BytesIO(b"Subject: hi\r\n\r\nhello\r\n"), ())
        except (MailboxError, StoreError):
            pass
        self.assertEqual(sorted(os.listdir(self.outsideDir)), ["secret.txt"])

    @defer.inlineCallbacks
    def test_flagChangeThroughLink(self):
        """
        Setting flags on a linked message (a rename in the account) does
        not change the file it points to.
        """
        link = os.path.join(self.alice.path, "cur", "1700000000.M1P1.evil:2,")
        os.symlink(self.outsideFile, link)
        before = snapshot(self.outsideDir)
        inbox = yield self.alice.getMailbox("INBOX")
        infos = yield inbox.listMessages()
        try:
            yield inbox.setFlags([i.uid for i in infos], ["\\Deleted"], "add")
            yield inbox.expunge()
        except (MailboxError, StoreError, AttributeError):
            pass
        self.assertEqual(snapshot(self.outsideDir), before)

