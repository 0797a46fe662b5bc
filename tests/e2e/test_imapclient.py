"""
End-to-end tests with imapclient (the IMAP library most Python programs
use, on top of imaplib) against a L{LoopbackServer}: a normal session of
a program that files mail (folders, FETCH of the parsed envelope and body
structure, SEARCH, flag changes, MOVE, delete with expunge, APPEND,
CONDSTORE and IDLE), checked through the store.

imapclient blocks, so each client step runs in a thread
(C{threads.deferToThread}) while the reactor serves it.
"""

import os
from io import BytesIO
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.e2e.server import LoopbackServer

try:
    import imapclient
except ImportError:  # pragma: no cover - the test extra installs it
    imapclient = None

PASSWORD = "correct horse battery"
ALICE = "alice@example.test"


def message(subject: str, body: str = "Hello", sender: str = "Sender <sender@far.test>") -> bytes:
    """
    A small message in wire form.
    """
    return (
        f"From: {sender}\r\nTo: Alice <{ALICE}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@far.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        f"\r\n{body}\r\n"
    ).encode("utf-8")


class IMAPClientTestsMixin:
    """
    One user with three messages in INBOX, served on loopback.
    """

    store = "maildir"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = LoopbackServer(os.path.abspath(self.mktemp()), store=self.store).start()  # type: ignore[attr-defined]
        self.account = yield self.server.addUser(ALICE, PASSWORD)
        self.addCleanup(lambda: self.server.stop())  # type: ignore[attr-defined]
        inbox = yield self.account.getMailbox("INBOX")
        yield inbox.append(BytesIO(message("first", "alpha bravo")), ["\\Flagged"])
        yield inbox.append(BytesIO(message("second", "charlie", "Bob <bob@far.test>")), [])
        yield inbox.append(BytesIO(message("third", "delta")), ["\\Seen"])

    def connect(self) -> Any:
        client = imapclient.IMAPClient("127.0.0.1", port=self.server.ports["imap"], ssl=False, timeout=20)
        client.login(ALICE, PASSWORD)
        return client

    @defer.inlineCallbacks
    def subjects(self, name: str) -> Any:
        """
        Subject to flags of every message of the server's mailbox C{name}.
        """
        mailbox = yield self.account.getMailbox(name)
        found = {}
        for info in (yield mailbox.listMessages()):
            f = yield mailbox.openMessage(info.uid)
            try:
                content = f.read()
            finally:
                f.close()
            subject = content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
            found[subject] = set(info.flags)
        return found

    @defer.inlineCallbacks
    def test_session(self) -> Any:
        """
        A filing program's session: read, search, flag, move, delete,
        append; every change is what the store then holds.
        """

        def work() -> dict:
            got: dict = {}
            with self.connect() as client:
                got["capabilities"] = set(client.capabilities())
                got["folders"] = {name for _flags, _delim, name in client.list_folders()}
                got["namespace"] = client.namespace()
                info = client.select_folder("INBOX")
                got["exists"] = info[b"EXISTS"]
                uids = client.search(["ALL"])
                got["uids"] = uids
                fetched = client.fetch(uids, ["ENVELOPE", "BODYSTRUCTURE", "FLAGS", "RFC822.SIZE", "BODY.PEEK[TEXT]"])
                got["envelopes"] = {
                    uid: (data[b"ENVELOPE"].subject, data[b"ENVELOPE"].from_[0].mailbox, data[b"ENVELOPE"].from_[0].host)
                    for uid, data in fetched.items()
                }
                got["bodystructure"] = fetched[uids[0]][b"BODYSTRUCTURE"]
                got["text"] = fetched[uids[0]][b"BODY[TEXT]"]
                got["flags"] = {uid: set(data[b"FLAGS"]) for uid, data in fetched.items()}
                got["unseen"] = client.search(["UNSEEN"])
                got["fromBob"] = client.search(["FROM", "bob@far.test"])
                got["body"] = client.search(["BODY", "charlie"])
                client.add_flags(uids[1], [imapclient.SEEN, b"$Important"])
                got["afterAdd"] = client.get_flags(uids[1])
                client.create_folder("Archive/2024")
                client.move(uids[0], "Archive/2024")
                client.delete_messages(uids[2])
                got["expunged"] = client.expunge()
                client.append("Archive/2024", message("appended", "echo"), flags=[imapclient.DRAFT])
                got["status"] = client.folder_status("Archive/2024", ["MESSAGES", "UIDNEXT", "UNSEEN"])
                client.close_folder()
            return got

        got = yield threads.deferToThread(work)
        self.assertIn(b"IDLE", got["capabilities"])
        self.assertIn(b"MOVE", got["capabilities"])
        self.assertIn("INBOX", got["folders"])
        self.assertEqual(got["namespace"].personal[0][0], "")
        self.assertEqual(got["exists"], 3)
        self.assertEqual(len(got["uids"]), 3)
        first, second, third = got["uids"]
        self.assertEqual(got["envelopes"][first], (b"first", b"sender", b"far.test"))
        self.assertEqual(got["envelopes"][second][1:], (b"bob", b"far.test"))
        self.assertEqual([part.lower() for part in got["bodystructure"][0:2]], [b"text", b"plain"])
        self.assertEqual(got["text"], b"alpha bravo\r\n")
        # The first session to SELECT sees the new messages as \\Recent.
        self.assertEqual(got["flags"][first], {b"\\Flagged", b"\\Recent"})
        self.assertEqual(got["unseen"], [first, second])
        self.assertEqual(got["fromBob"], [second])
        self.assertEqual(got["body"], [second])
        self.assertEqual(set(got["afterAdd"][second]), {b"\\Seen", b"$Important", b"\\Recent"})
        self.assertEqual(got["status"][b"MESSAGES"], 2)
        self.assertEqual(got["status"][b"UNSEEN"], 2)

        inbox = yield self.subjects("INBOX")
        self.assertEqual(inbox, {"second": {"\\Seen", "$Important"}})
        archive = yield self.subjects("Archive/2024")
        self.assertEqual(archive, {"first": {"\\Flagged"}, "appended": {"\\Draft"}})

    @defer.inlineCallbacks
    def test_condstore(self) -> Any:
        """
        imapclient's CONDSTORE use: HIGHESTMODSEQ on SELECT, FETCH with
        CHANGEDSINCE returns only what changed since.
        """

        def before() -> Any:
            with self.connect() as client:
                client.enable("CONDSTORE")
                info = client.select_folder("INBOX")
                return info[b"HIGHESTMODSEQ"]

        highest = yield threads.deferToThread(before)
        yield self.serverFlag("second", ["\\Answered"])

        def after() -> Any:
            with self.connect() as client:
                client.select_folder("INBOX")
                return client.fetch(client.search(["ALL"]), ["FLAGS"], modifiers=[f"CHANGEDSINCE {highest}"])

        changed = yield threads.deferToThread(after)
        self.assertEqual(len(changed), 1)
        (data,) = changed.values()
        self.assertIn(b"\\Answered", data[b"FLAGS"])
        self.assertGreater(data[b"MODSEQ"][0], highest)

    @defer.inlineCallbacks
    def serverFlag(self, subject: str, flags: list) -> Any:
        mailbox = yield self.account.getMailbox("INBOX")
        for info in (yield mailbox.listMessages()):
            f = yield mailbox.openMessage(info.uid)
            try:
                found = f"Subject: {subject}\r\n".encode() in f.read()
            finally:
                f.close()
            if found:
                yield mailbox.setFlags([info.uid], flags, "add")
                return
        raise AssertionError(f"no message {subject!r}")

    @defer.inlineCallbacks
    def test_idle(self) -> Any:
        """
        imapclient's IDLE loop is told of a message delivered meanwhile.
        """
        client = yield threads.deferToThread(self.connect)
        self.addCleanup(lambda: threads.deferToThread(client.logout))
        yield threads.deferToThread(client.select_folder, "INBOX")
        yield threads.deferToThread(client.idle)
        inbox = yield self.account.getMailbox("INBOX")
        yield inbox.append(BytesIO(message("fourth")), [])

        def wait() -> list:
            # Bounded: idle_check returns what arrived, or [] after 20 s.
            responses = client.idle_check(timeout=20)
            client.idle_done()
            return responses

        responses = yield threads.deferToThread(wait)
        self.assertIn((4, b"EXISTS"), responses)


class MaildirIMAPClientTests(IMAPClientTestsMixin, TestCase):
    """
    imapclient against the Maildir store.
    """

    if imapclient is None:
        skip = "imapclient is not installed (pip install '.[test]')"


class SQLiteIMAPClientTests(IMAPClientTestsMixin, TestCase):
    """
    imapclient against the SQL store on SQLite.
    """

    store = "sql"

    if imapclient is None:
        skip = "imapclient is not installed (pip install '.[test]')"
