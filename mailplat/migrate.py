"""
Moving accounts from one store to another with nothing lost
(C{mailplat migrate}).

The engine works through the store contract only (L{mailplat.interfaces}):
the source is read with L{IAccount} and L{IMailbox} (only their reading
side, so the read-only readers of L{mailplat.store.foreign} serve too), and
the target is written through L{IMailboxImport}, so that every mailbox
keeps its UIDVALIDITY and every message its UID, and IMAP clients need not
download anything again.

For each account, L{migrateAccount}:

  1. makes the account in the target (with the target's default
     mailboxes) and the source's mailboxes, with their special-use
     attributes; a default mailbox the source does not have is removed
     while it is empty, and a name that is only hierarchy (C{\\Noselect})
     in the source is made so in the target too;
  2. per mailbox, gives the (empty) target the source's UIDVALIDITY, then
     imports every message whose UID the target does not hold yet, with its
     flags, keywords, internal date and modseq, and finally raises the
     target's UIDNEXT and HIGHESTMODSEQ to the source's; a message already
     copied (a run that was interrupted and started again) is skipped, its
     flags brought up to date;
  3. makes the subscriptions and the mailboxes' ACLs (RFC 4314) the source's;
  4. verifies: per mailbox the UIDVALIDITY, the UIDs, flags, internal dates
     (whole seconds: an mbox keeps no more) and sizes, the modseqs, and the
     sha256 of every message's content, on both sides.

Modseqs are kept so that a CONDSTORE/QRESYNC client's cache stays valid
(it does not fetch every message's flags again): each message keeps its
MODSEQ and the mailbox its HIGHESTMODSEQ.  The one exception is a message
whose flags changed in the source between two runs of an interrupted
migration: the target cannot give it back a modseq it has passed, so its
change is given a modseq above the source's HIGHESTMODSEQ, which every
client sees as a change.  A source that keeps no modseqs says so with a
HIGHESTMODSEQ of 0 (the Dovecot and Courier readers of
L{mailplat.store.foreign}): its messages get new modseqs in the target,
above L{UNKNOWN_MODSEQ_FLOOR}, so that a client holding a modseq of the
source (which may be any number) sees every message as changed and
fetches its flags once, rather than missing the target's later changes
behind a HIGHESTMODSEQ lower than its own.

A target mailbox that holds other mail under another UIDVALIDITY, or a
message of the source whose UID is below the target's UIDNEXT but missing
there, cannot be copied faithfully: the run stops with L{MigrationError}
naming the mailbox, rather than renumbering anything.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Generator, List, Optional, Tuple

from twisted.internet import defer

from mailplat.errors import MailboxError, MailplatError, NoSuchMailbox
from mailplat.interfaces import IAccount, IAccountACL, IMailbox, IMailboxImport, IStore
from mailplat.mailbox import DEFAULT_MAILBOXES

CHUNK = 65536

#: The HIGHESTMODSEQ a target mailbox gets before messages from a source
#: without modseqs are imported: above any modseq such a source can have
#: given (Dovecot counts one per change in a mailbox; 2**32 changes is
#: beyond a mailbox's life), well below the 2**63 of RFC 7162.
UNKNOWN_MODSEQ_FLOOR = 2**32


class MigrationError(MailplatError):
    """
    A migration cannot go on without losing or renumbering something; the
    message says which account and mailbox, and why.
    """


class Progress:
    """
    What the engine tells as it goes; this base class says nothing.
    L{mailplat.admin.migrate_cmd} draws a bar or prints lines.
    """

    def begin(self, address: str, total: int) -> None:
        """
        An account with C{total} messages starts.
        """

    def mailbox(self, address: str, name: str, messages: int) -> None:
        """
        The mailbox C{name} with C{messages} messages is being copied.
        """

    def advance(self, copied: int, skipped: int) -> None:
        """
        C{copied} more messages were copied and C{skipped} were there
        already.
        """

    def end(self, address: str) -> None:
        """
        The account is copied (verification follows).
        """


@dataclass
class AccountReport:
    """
    The outcome of one account's migration.

    @ivar copied: messages copied in this run.
    @ivar skipped: messages already in the target (a resumed run).
    @ivar mailboxes: mailboxes handled.
    @ivar mismatches: one line per difference found by the verification;
        empty when the copy is faithful.
    """

    address: str
    copied: int = 0
    skipped: int = 0
    mailboxes: int = 0
    mismatches: List[str] = field(default_factory=list)


def _sameDate(a: float, b: float) -> bool:
    """
    Whether two internal dates are the same to the second (an mbox keeps
    whole seconds).
    """
    return int(a) == int(b)


@defer.inlineCallbacks
def contentDigest(mailbox: Any, uid: int) -> Generator["defer.Deferred[Any]", Any, str]:
    """
    The sha256 (hex) of a message's wire form, read in pieces.
    """
    f = yield mailbox.openMessage(uid)
    digest = hashlib.sha256()
    try:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    finally:
        f.close()
    return digest.hexdigest()


def _selectable(listing: List[Any]) -> List[Tuple[str, Optional[str]]]:
    """
    The selectable mailboxes of a listing with their special-use attribute.
    """
    result = []
    for entry in listing:
        if "\\Noselect" in entry.attributes:
            continue
        uses = [a for a in entry.attributes if a not in ("\\HasChildren", "\\HasNoChildren", "\\Marked", "\\Unmarked")]
        result.append((entry.name, uses[0] if uses else None))
    return result


class Migration:
    """
    Copies accounts from C{source} to C{target}.

    @ivar source: the store read (any object with the reading side of
        L{IStore}).
    @ivar target: the store written; its mailboxes must provide
        L{IMailboxImport}.
    @ivar progress: told of the progress.
    """

    def __init__(self, source: Any, target: IStore, progress: Optional[Progress] = None) -> None:
        self.source = source
        self.target = target
        self.progress = progress or Progress()

    @defer.inlineCallbacks
    def run(self, addresses: Optional[List[str]] = None) -> Generator["defer.Deferred[Any]", Any, List[AccountReport]]:
        """
        Migrate and verify C{addresses} (every account of the source when
        L{None}).

        @return: a Deferred firing with one L{AccountReport} per account.
        """
        if addresses is None:
            addresses = yield self.source.listAccounts()
        reports = []
        for address in addresses:
            report = yield self.migrateAccount(address)
            yield self.verifyAccount(address, report)
            reports.append(report)
        return reports

    @defer.inlineCallbacks
    def migrateAccount(self, address: str) -> Generator["defer.Deferred[Any]", Any, AccountReport]:
        """
        Copy one account (steps 1-3 of the module's description).

        @return: a Deferred firing with its L{AccountReport} (not verified
            yet).
        """
        report = AccountReport(address)
        source: IAccount = yield self.source.getAccount(address)
        target: IAccount = yield self.target.getAccount(address, create=True)
        listing = yield source.listMailboxes()
        wanted = _selectable(listing)
        noselect = {e.name for e in listing if "\\Noselect" in e.attributes}
        yield self._shapeMailboxes(address, target, wanted, noselect)

        sources: List[Tuple[str, Any, Any]] = []
        total = 0
        for name, _ in wanted:
            mailbox = yield source.getMailbox(name)
            status = yield mailbox.status()
            total += status.messages
            sources.append((name, mailbox, status))
        self.progress.begin(address, total)
        for name, mailbox, status in sources:
            self.progress.mailbox(address, name, status.messages)
            yield self._copyMailbox(address, target, name, mailbox, status, report)
            report.mailboxes += 1

        wantedSubs = set((yield source.listSubscriptions()))
        haveSubs = set((yield target.listSubscriptions()))
        for name in sorted(wantedSubs - haveSubs):
            yield target.subscribe(name)
        for name in sorted(haveSubs - wantedSubs):
            yield target.unsubscribe(name)
        yield self._copyACLs(source, target, wanted)
        self.progress.end(address)
        return report

    @defer.inlineCallbacks
    def _copyACLs(
        self, source: IAccount, target: IAccount, wanted: List[Tuple[str, Optional[str]]]
    ) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Make each mailbox's ACL (RFC 4314: what other users may do with
        it) the source's, where both stores keep ACLs; a store without
        them (a foreign Maildir) has nothing to copy.
        """
        sourceACL, targetACL = IAccountACL(source, None), IAccountACL(target, None)
        if sourceACL is None or targetACL is None:
            return
        for name, _ in wanted:
            want = yield sourceACL.getACL(name)
            have = yield targetACL.getACL(name)
            for identifier in sorted(set(have) - set(want)):
                yield targetACL.setACL(name, identifier, None)
            for identifier, rights in sorted(want.items()):
                if have.get(identifier) != rights:
                    yield targetACL.setACL(name, identifier, rights)

    @defer.inlineCallbacks
    def _shapeMailboxes(
        self, address: str, target: IAccount, wanted: List[Tuple[str, Optional[str]]], noselect: set
    ) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Make the target's mailboxes those of the source, as far as that
        can be done without touching mail.
        """
        have = {name: use for name, use in _selectable((yield target.listMailboxes()))}
        names = {name for name, _ in wanted}
        for name, use in wanted:
            if name in have and have[name] != use and name != "INBOX":
                # A default mailbox with another special use: made again
                # while it is still empty.
                mailbox = yield target.getMailbox(name)
                if (yield mailbox.status()).messages == 0:
                    yield target.deleteMailbox(name)
                    have.pop(name)
            if name not in have:
                try:
                    yield target.createMailbox(name, use)
                except MailboxError:
                    # Made meanwhile as the superior of another one: no
                    # special use can be given to it any more.
                    pass
                have = {n: u for n, u in _selectable((yield target.listMailboxes()))}
        defaults = {name for name, _ in DEFAULT_MAILBOXES}
        for name in sorted(set(have) - names, key=lambda n: -n.count("/")):
            if name == "INBOX":
                continue
            mailbox = yield target.getMailbox(name)
            if (yield mailbox.status()).messages:
                continue
            if name in defaults or name in noselect:
                # A default the source lacks, or a superior the target made
                # selectable that is only hierarchy in the source.
                yield target.deleteMailbox(name)

    @defer.inlineCallbacks
    def _copyMailbox(self, address: str, targetAccount: IAccount, name: str, source: IMailbox, status: Any,
                     report: AccountReport) -> Generator["defer.Deferred[Any]", Any, None]:
        where = f"{address} {name}"
        mailbox = yield targetAccount.getMailbox(name)
        target = IMailboxImport(mailbox, None)
        if target is None:
            raise MigrationError(f"{where}: the target store cannot import with UIDs (no IMailboxImport)")
        targetStatus = yield target.status()
        sourceInfos = yield source.listMessages()
        # 0: the source keeps no modseqs (RFC 7162's NOMODSEQ).
        keepModseqs = status.highestModseq > 0
        highest = max([status.highestModseq] + [i.modseq for i in sourceInfos])
        if targetStatus.uidValidity != status.uidValidity:
            if targetStatus.messages:
                raise MigrationError(
                    f"{where}: the target holds {targetStatus.messages} other message(s) under UIDVALIDITY"
                    f" {targetStatus.uidValidity}, the source's is {status.uidValidity}; nothing copied into it"
                )
            yield target.setUIDValidity(status.uidValidity)
            targetStatus = yield target.status()
        present = {i.uid: i for i in (yield target.listMessages())}
        # First, so that a flag change below (a resumed run) and, from a
        # source without modseqs, every import get a modseq above every one
        # a client of the source may know.
        yield target.raiseHighestModseq(highest if keepModseqs else UNKNOWN_MODSEQ_FLOOR)
        uidNext = targetStatus.uidNext
        copied = skipped = 0
        for info in sourceInfos:
            there = present.get(info.uid)
            if there is not None:
                if there.flags != info.flags:
                    yield target.setFlags([info.uid], info.flags, "set")
                skipped += 1
                self.progress.advance(0, 1)
                continue
            if info.uid < uidNext:
                raise MigrationError(
                    f"{where}: message UID {info.uid} is missing in the target, whose UIDNEXT is already"
                    f" {uidNext}; it cannot be copied under its UID"
                )
            f = yield source.openMessage(info.uid)
            try:
                yield target.importMessage(info.uid, f, info.flags, info.internalDate,
                                           modseq=info.modseq if keepModseqs and info.modseq > 0 else None)
            finally:
                f.close()
            uidNext = info.uid + 1
            copied += 1
            self.progress.advance(1, 0)
        yield target.raiseUIDNext(status.uidNext)
        report.copied += copied
        report.skipped += skipped

    @defer.inlineCallbacks
    def verifyAccount(
        self, address: str, report: Optional[AccountReport] = None
    ) -> Generator["defer.Deferred[Any]", Any, AccountReport]:
        """
        Compare the account in both stores: mailboxes, subscriptions,
        UIDVALIDITY, UIDs, flags, internal dates, sizes, modseqs and
        content hashes.

        @return: a Deferred firing with the L{AccountReport}, its
            C{mismatches} filled in.
        """
        report = report if report is not None else AccountReport(address)
        source = yield self.source.getAccount(address)
        target = yield self.target.getAccount(address)
        bad = report.mismatches
        wanted = _selectable((yield source.listMailboxes()))
        have = dict(_selectable((yield target.listMailboxes())))
        for name, use in wanted:
            if name not in have:
                bad.append(f"{address} {name}: mailbox missing in the target")
                continue
            if have[name] != use:
                bad.append(f"{address} {name}: special use {have[name]} in the target, {use} in the source")
            src = yield source.getMailbox(name)
            try:
                dst = yield target.getMailbox(name)
            except NoSuchMailbox:
                bad.append(f"{address} {name}: mailbox missing in the target")
                continue
            yield self._verifyMailbox(f"{address} {name}", src, dst, bad)
        subsSource = yield source.listSubscriptions()
        subsTarget = yield target.listSubscriptions()
        if subsSource != subsTarget:
            bad.append(f"{address}: subscriptions differ: source {subsSource}, target {subsTarget}")
        sourceACL, targetACL = IAccountACL(source, None), IAccountACL(target, None)
        if sourceACL is not None and targetACL is not None:
            for name, _ in wanted:
                if name not in have:
                    continue
                aclSource = yield sourceACL.getACL(name)
                aclTarget = yield targetACL.getACL(name)
                if aclSource != aclTarget:
                    bad.append(f"{address} {name}: ACL differs: source {aclSource}, target {aclTarget}")
        return report

    @defer.inlineCallbacks
    def _verifyMailbox(self, where: str, src: Any, dst: Any, bad: List[str]) -> Generator["defer.Deferred[Any]", Any, None]:
        s = yield src.status()
        d = yield dst.status()
        if s.uidValidity != d.uidValidity:
            bad.append(f"{where}: UIDVALIDITY {d.uidValidity} in the target, {s.uidValidity} in the source")
        if d.uidNext < s.uidNext:
            bad.append(f"{where}: UIDNEXT {d.uidNext} in the target, {s.uidNext} in the source")
        keepModseqs = s.highestModseq > 0
        if keepModseqs and d.highestModseq < s.highestModseq:
            bad.append(f"{where}: HIGHESTMODSEQ {d.highestModseq} in the target, {s.highestModseq} in the source")
        sourceInfos = {i.uid: i for i in (yield src.listMessages())}
        targetInfos: Dict[int, Any] = {i.uid: i for i in (yield dst.listMessages())}
        if len(sourceInfos) != len(targetInfos):
            bad.append(f"{where}: {len(targetInfos)} message(s) in the target, {len(sourceInfos)} in the source")
        for uid in sorted(set(sourceInfos) - set(targetInfos)):
            bad.append(f"{where}: UID {uid} missing in the target")
        for uid in sorted(set(targetInfos) - set(sourceInfos)):
            bad.append(f"{where}: UID {uid} in the target is not in the source")
        for uid in sorted(set(sourceInfos) & set(targetInfos)):
            a, b = sourceInfos[uid], targetInfos[uid]
            if a.flags != b.flags:
                bad.append(f"{where}: UID {uid} flags {sorted(b.flags)} in the target, {sorted(a.flags)} in the source")
            if not _sameDate(a.internalDate, b.internalDate):
                bad.append(f"{where}: UID {uid} internal date {b.internalDate} in the target, {a.internalDate} in the source")
            if a.size != b.size:
                bad.append(f"{where}: UID {uid} size {b.size} in the target, {a.size} in the source")
            if keepModseqs and b.modseq != a.modseq and b.modseq <= s.highestModseq:
                # Another modseq is only right above everything a client
                # of the source can know (see the module's description).
                bad.append(f"{where}: UID {uid} modseq {b.modseq} in the target, {a.modseq} in the source")
            if (yield contentDigest(src, uid)) != (yield contentDigest(dst, uid)):
                bad.append(f"{where}: UID {uid} content differs (sha256)")


def migrate(source: Any, target: IStore, addresses: Optional[List[str]] = None,
            progress: Optional[Progress] = None) -> defer.Deferred:
    """
    Migrate and verify accounts from C{source} to C{target} (see
    L{Migration.run}).
    """
    return Migration(source, target, progress).run(addresses)

