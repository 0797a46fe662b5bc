"""
Symbolic links planted inside an account of the mbox store (by a user
with a shell, a restored backup, another program) are not followed to
read, write or delete outside the account: not a mailbox file, not a
folder's C{.d} directory, not the C{mail} tree, not the INBOX, not a side
file.
"""

import io
import os
import shutil
from typing import Optional

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailplat.errors import MailboxError, StoreError
from mailplat.store.mbox import INBOX_FILE, MAIL_DIR, POP3_LOCK_SUFFIX, UIDLIST_SUFFIX, MboxStore
from tests.test_isolation import ALICE, BOB, BOB_SECRET, MESSAGE, OUTSIDE_SECRET, snapshot

PLANTED = b"Subject: planted\r\n\r\nplanted\r\n"


class MboxSymlinkTests(TestCase):
    """
    Links in Alice's account pointing at Bob's mail or outside the store.
    """

    @defer.inlineCallbacks
    def setUp(self):
        base = os.path.abspath(self.mktemp())
        self.root = os.path.join(base, "mail")
        os.makedirs(self.root)
        self.outsideDir = os.path.join(base, "outside")
        os.makedirs(self.outsideDir)
        self.outsideFile = os.path.join(self.outsideDir, "secret.txt")
        with open(self.outsideFile, "wb") as f:
            f.write(b"From x Thu Jan  1 00:00:00 2026\nSubject: outside\n\n" + OUTSIDE_SECRET + b"\n")
        self.store = MboxStore(self.root)
        self.addCleanup(self.store.close)
        self.alice = yield self.store.getAccount(ALICE, create=True)
        self.bob = yield self.store.getAccount(BOB, create=True)
        inbox = yield self.bob.getMailbox("INBOX")
        yield inbox.append(io.BytesIO(MESSAGE), ())
        yield self.bob.createMailbox("Work")
        work = yield self.bob.getMailbox("Work")
        yield work.append(io.BytesIO(MESSAGE), ())
        self.bobInbox = os.path.join(self.bob.home, INBOX_FILE)
        self.bobMail = os.path.join(self.bob.home, MAIL_DIR)
        self.aliceMail = os.path.join(self.alice.home, MAIL_DIR)
        os.makedirs(self.aliceMail, exist_ok=True)
        self.bobBefore = snapshot(self.bob.home)
        self.outsideBefore = snapshot(self.outsideDir)

    def untouched(self) -> None:
        """
        Bob's account and the outside directory are as they were.
        """
        self.assertEqual(snapshot(self.bob.home), self.bobBefore)
        self.assertEqual(snapshot(self.outsideDir), self.outsideBefore)

    @defer.inlineCallbacks
    def readAll(self, name: str = "INBOX"):
        """
        Every message of Alice's mailbox C{name}, concatenated; C{b""} when
        it cannot be opened.
        """
        try:
            mailbox = yield self.alice.getMailbox(name)
            infos = yield mailbox.listMessages()
        except (MailboxError, StoreError, OSError):
            return b""
        out = b""
        for info in infos:
            try:
                f = yield mailbox.openMessage(info.uid)
            except (MailboxError, StoreError, OSError):
                continue
            with f:
                out += f.read()
        return out

    @defer.inlineCallbacks
    def attempt(self, d: "defer.Deferred") -> "defer.Deferred[Optional[object]]":
        """
        Wait for C{d}; a refusal (store, mailbox or OS error) is fine.
        """
        try:
            result = yield d
        except (MailboxError, StoreError, OSError):
            return None
        return result

    @defer.inlineCallbacks
    def appendTo(self, name: str):
        """
        Try to append to Alice's mailbox C{name}.
        """
        try:
            mailbox = yield self.alice.getMailbox(name)
            yield mailbox.append(io.BytesIO(PLANTED), ())
        except (MailboxError, StoreError, OSError):
            pass

    def plant(self, target: str, *where: str) -> str:
        link = os.path.join(self.alice.home, *where)
        if os.path.lexists(link):
            if os.path.isdir(link) and not os.path.islink(link):
                shutil.rmtree(link)
            else:
                os.unlink(link)
        os.symlink(target, link)
        return link

    # A mailbox file that is a link.

    @defer.inlineCallbacks
    def test_folderLinkNotListed(self):
        self.plant(self.bobInbox, MAIL_DIR, "Evil")
        entries = yield self.alice.listMailboxes()
        self.assertNotIn("Evil", [e.name for e in entries])

    @defer.inlineCallbacks
    def test_folderLinkNotRead(self):
        self.plant(self.bobInbox, MAIL_DIR, "Evil")
        self.plant(self.outsideFile, MAIL_DIR, "Outside")
        self.assertNotIn(BOB_SECRET, (yield self.readAll("Evil")))
        self.assertNotIn(OUTSIDE_SECRET, (yield self.readAll("Outside")))

    @defer.inlineCallbacks
    def test_folderLinkNotWritten(self):
        self.plant(self.bobInbox, MAIL_DIR, "Evil")
        self.plant(self.outsideFile, MAIL_DIR, "Outside")
        yield self.appendTo("Evil")
        yield self.appendTo("Outside")
        self.untouched()

    @defer.inlineCallbacks
    def test_folderLinkNotDeleted(self):
        self.plant(self.bobInbox, MAIL_DIR, "Evil")
        yield self.attempt(self.alice.deleteMailbox("Evil"))
        self.untouched()

    @defer.inlineCallbacks
    def test_folderLinkNotRenamed(self):
        self.plant(self.bobInbox, MAIL_DIR, "Evil")
        yield self.attempt(self.alice.renameMailbox("Evil", "Mine"))
        self.untouched()
        self.assertNotIn(BOB_SECRET, (yield self.readAll("Mine")))

    @defer.inlineCallbacks
    def test_createOverLink(self):
        """
        Creating a mailbox whose file is a link does not truncate, or write
        to, what it points to.
        """
        self.plant(self.outsideFile, MAIL_DIR, "New")
        yield self.attempt(self.alice.createMailbox("New"))
        self.untouched()

    @defer.inlineCallbacks
    def test_renameOntoLink(self):
        """
        Renaming a mailbox onto a name whose file is a link does not write
        through the link.
        """
        yield self.alice.createMailbox("Mine")
        self.plant(self.outsideFile, MAIL_DIR, "Target")
        yield self.attempt(self.alice.renameMailbox("Mine", "Target"))
        self.untouched()
        self.plant(self.bobMail, MAIL_DIR, "Far.d")
        yield self.attempt(self.alice.renameMailbox("Mine", "Far/Mine"))
        yield self.attempt(self.alice.renameMailbox("INBOX", "Far/Old"))
        yield self.attempt(self.alice.renameMailbox("INBOX", "Target"))
        self.untouched()

    @defer.inlineCallbacks
    def test_pop3LockLink(self):
        """
        The POP3 lock file of a mailbox, linked outside, is not opened.
        """
        self.plant(self.outsideFile, INBOX_FILE + POP3_LOCK_SUFFIX)
        inbox = yield self.alice.getMailbox("INBOX")
        release = yield self.attempt(inbox.lockExclusive())
        if release is not None:
            release()
        self.untouched()

    # A folder directory that is a link.

    @defer.inlineCallbacks
    def test_childrenLinkNotEntered(self):
        """
        C{mail/Evil.d} linked to Bob's C{mail} directory: Bob's C{Work} is
        neither listed, read, written nor deleted as C{Evil/Work}.
        """
        self.plant(self.bobMail, MAIL_DIR, "Evil.d")
        entries = yield self.alice.listMailboxes()
        self.assertNotIn("Evil/Work", [e.name for e in entries])
        self.assertNotIn(BOB_SECRET, (yield self.readAll("Evil/Work")))
        yield self.appendTo("Evil/Work")
        yield self.attempt(self.alice.createMailbox("Evil/New"))
        yield self.attempt(self.alice.deleteMailbox("Evil/Work"))
        yield self.attempt(self.alice.renameMailbox("Evil/Work", "Mine"))
        self.untouched()

    @defer.inlineCallbacks
    def test_childrenLinkNotDeleted(self):
        """
        Deleting C{Evil} (a file of Alice's) does not remove the linked
        children directory's content.
        """
        yield self.alice.createMailbox("Evil")
        self.plant(self.bobMail, MAIL_DIR, "Evil.d")
        yield self.attempt(self.alice.deleteMailbox("Evil"))
        self.untouched()

    @defer.inlineCallbacks
    def test_mailTreeLink(self):
        """
        Alice's whole C{mail} directory linked to Bob's.
        """
        self.plant(self.bobMail, MAIL_DIR)
        entries = yield self.alice.listMailboxes()
        self.assertNotIn("Work", [e.name for e in entries])
        self.assertNotIn(BOB_SECRET, (yield self.readAll("Work")))
        yield self.appendTo("Work")
        yield self.attempt(self.alice.createMailbox("New"))
        yield self.attempt(self.alice.deleteMailbox("Work"))
        self.untouched()

    # The INBOX and side files.

    @defer.inlineCallbacks
    def test_inboxLink(self):
        """
        Alice's C{inbox} file linked to Bob's: not read, not written.
        """
        self.plant(self.bobInbox, INBOX_FILE)
        self.assertNotIn(BOB_SECRET, (yield self.readAll("INBOX")))
        yield self.appendTo("INBOX")
        self.untouched()

    @defer.inlineCallbacks
    def test_sideFileLinkNotWritten(self):
        """
        A side file linked outside is not appended to when flags change.
        """
        inbox = yield self.alice.getMailbox("INBOX")
        yield inbox.append(io.BytesIO(PLANTED), ())
        infos = yield inbox.listMessages()
        self.plant(self.outsideFile, INBOX_FILE + UIDLIST_SUFFIX)
        inbox = yield self.alice.getMailbox("INBOX")
        yield self.attempt(inbox.setFlags([i.uid for i in infos], ["\\Seen"], "add"))
        self.untouched()
