"""
A store that keeps everything in memory: nothing survives a restart.

It is the reference implementation of the store contract (the smallest
code that passes the conformance suite), the store protocol unit tests use,
and C{--store memory} for trying mailplat out without touching a disk.
"""

import time
from typing import Any, BinaryIO, Dict, Generator, Iterable, List, Optional, Set, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.errors import (
    MailboxError,
    MailboxExists,
    MailboxLocked,
    NoSuchAccount,
    NoSuchMailbox,
    NoSuchMessage,
)
from twisted.plugin import IPlugin

from mailplat.interfaces import (
    ConditionalFlags,
    IAccount,
    IAccountACL,
    IMailbox,
    IMailboxImport,
    IMailboxListener,
    IMessageReader,
    IStore,
    IStoreACL,
    IStoreFactory,
)
from mailplat.mailbox import (
    DEFAULT_MAILBOXES,
    MailboxStatus,
    MessageInfo,
    applyFlags,
    buildListing,
    parentNames,
    renamedName,
    validateMailboxName,
)
from mailplat.uidvalidity import newUIDValidity

log = Logger()


def readAll(source: BinaryIO) -> bytes:
    """
    Read a message source to its end.
    """
    chunks: List[bytes] = []
    while True:
        chunk = source.read(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def checkImportedUID(name: str, uid: int, uidNext: int) -> None:
    """
    Refuse a UID an import may not use (see L{IMailboxImport.importMessage}).

    @raise MailboxError: C{uid} is not an int at least C{uidNext}, or is
        beyond what IMAP allows (2**32-1).
    """
    if not isinstance(uid, int) or uid < uidNext or uid > 2**32 - 1:
        raise MailboxError(f"Mailbox {name}: cannot import a message as UID {uid!r}; UIDNEXT is {uidNext}")


#: The largest modseq (RFC 7162 mod-sequence-value: 63 bits).
MAX_MODSEQ = 2**63 - 1


def checkImportedModseq(name: str, modseq: int) -> None:
    """
    Refuse a modseq an import may not give (see
    L{IMailboxImport.importMessage} and
    L{IMailboxImport.raiseHighestModseq}).

    @raise MailboxError: C{modseq} is not an int in 1..L{MAX_MODSEQ}.
    """
    if isinstance(modseq, bool) or not isinstance(modseq, int) or not 1 <= modseq <= MAX_MODSEQ:
        raise MailboxError(f"Mailbox {name}: cannot import the modseq {modseq!r}; a modseq is 1..{MAX_MODSEQ}")


def checkUnchangedSince(unchangedSince: Optional[int]) -> None:
    """
    Refuse an C{unchangedSince} that is not a modseq (see
    L{IMailbox.setFlags}): L{None}, or an int in 0..L{MAX_MODSEQ}.

    @raise ValueError: it is not.
    """
    if unchangedSince is None:
        return
    if isinstance(unchangedSince, bool) or not isinstance(unchangedSince, int) or not 0 <= unchangedSince <= MAX_MODSEQ:
        raise ValueError(f"unchangedSince must be a modseq (0..{MAX_MODSEQ}), not {unchangedSince!r}")


def checkImportedUIDValidity(name: str, uidValidity: int, messages: int) -> None:
    """
    Refuse a UIDVALIDITY change an import may not make (see
    L{IMailboxImport.setUIDValidity}).

    @raise MailboxError: the value is out of range or the mailbox holds
        C{messages} > 0 messages.
    """
    if not isinstance(uidValidity, int) or not 1 <= uidValidity <= 2**32 - 1:
        raise MailboxError(f"Mailbox {name}: UIDVALIDITY {uidValidity!r} is out of range")
    if messages:
        raise MailboxError(f"Mailbox {name} holds {messages} message(s); its UIDVALIDITY cannot change")


class ListenerSet:
    """
    The listeners of one mailbox; shared by every store's mailbox class.
    """

    def __init__(self) -> None:
        self._listeners: List[IMailboxListener] = []

    def add(self, listener: IMailboxListener) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove(self, listener: IMailboxListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self, mailbox: IMailbox) -> None:
        """
        Tell every listener; one that raises is logged and the rest still
        hear of it.
        """
        for listener in list(self._listeners):
            try:
                listener.mailboxChanged(mailbox)
            except Exception:
                log.failure("mailbox listener {listener!r} failed", listener=listener)


@implementer(IMailbox, IMailboxImport, IMessageReader)
class MemoryMailbox:
    """
    One mailbox held in memory.
    """

    def __init__(self, name: str, specialUse: Optional[str] = None) -> None:
        self.name = name
        self.specialUse = specialUse
        self.uidValidity = newUIDValidity()
        self._messages: Dict[int, MessageInfo] = {}
        self._bodies: Dict[int, bytes] = {}
        self._uidNext = 1
        self._modseq = 1
        self._unclaimed: Set[int] = set()
        self._listeners = ListenerSet()
        self._locked = False

    def status(self) -> defer.Deferred:
        infos = self._messages.values()
        return defer.succeed(
            MailboxStatus(
                messages=len(self._messages),
                recent=len(self._unclaimed),
                unseen=sum(1 for i in infos if "\\Seen" not in i.flags),
                uidNext=self._uidNext,
                uidValidity=self.uidValidity,
                highestModseq=self._modseq,
                size=sum(i.size for i in infos),
            )
        )

    def listMessages(self) -> defer.Deferred:
        return defer.succeed([self._messages[uid] for uid in sorted(self._messages)])

    def claimRecent(self) -> defer.Deferred:
        claimed = sorted(self._unclaimed)
        self._unclaimed.clear()
        return defer.succeed(claimed)

    def openMessage(self, uid: int) -> defer.Deferred:
        from io import BytesIO

        if uid not in self._bodies:
            return defer.fail(NoSuchMessage(f"No message with UID {uid}"))
        return defer.succeed(BytesIO(self._bodies[uid]))

    def readMessage(self, uid: int, limit: int) -> Optional[bytes]:
        """
        See L{IMessageReader}.
        """
        body = self._bodies.get(uid)
        if body is None:
            raise NoSuchMessage(f"No message with UID {uid}")
        return body if len(body) <= limit else None

    def _add(self, body: bytes, flags: Iterable[str], internalDate: Optional[float], uid: Optional[int] = None,
             modseq: Optional[int] = None) -> int:
        uid = self._uidNext if uid is None else uid
        self._uidNext = uid
        self._uidNext += 1
        if modseq is None:
            self._modseq += 1
            modseq = self._modseq
        else:
            self._modseq = max(self._modseq, modseq)
        self._bodies[uid] = body
        self._messages[uid] = MessageInfo(
            uid=uid,
            flags=applyFlags(frozenset(), flags, "set"),
            internalDate=time.time() if internalDate is None else float(internalDate),
            size=len(body),
            modseq=modseq,
        )
        self._unclaimed.add(uid)
        return uid

    def append(self, source: BinaryIO, flags: Iterable[str] = (), internalDate: Optional[float] = None) -> defer.Deferred:
        uid = self._add(readAll(source), flags, internalDate)
        self._listeners.notify(self)
        return defer.succeed(uid)

    def setUIDValidity(self, uidValidity: int) -> defer.Deferred:
        """
        Give the empty mailbox another UIDVALIDITY (see
        L{IMailboxImport.setUIDValidity}).
        """
        try:
            checkImportedUIDValidity(self.name, uidValidity, len(self._messages))
        except MailboxError as e:
            return defer.fail(e)
        self.uidValidity = int(uidValidity)
        return defer.succeed(None)

    def importMessage(self, uid: int, source: BinaryIO, flags: Iterable[str] = (),
                      internalDate: Optional[float] = None, modseq: Optional[int] = None) -> defer.Deferred:
        """
        Add a message under a given UID, and modseq when given (see
        L{IMailboxImport.importMessage}).
        """
        try:
            checkImportedUID(self.name, uid, self._uidNext)
            if modseq is not None:
                checkImportedModseq(self.name, modseq)
        except MailboxError as e:
            return defer.fail(e)
        self._add(readAll(source), flags, internalDate, uid, modseq)
        self._listeners.notify(self)
        return defer.succeed(uid)

    def raiseHighestModseq(self, modseq: int) -> defer.Deferred:
        """
        Raise HIGHESTMODSEQ to at least C{modseq} (see
        L{IMailboxImport.raiseHighestModseq}).
        """
        try:
            checkImportedModseq(self.name, modseq)
        except MailboxError as e:
            return defer.fail(e)
        self._modseq = max(self._modseq, modseq)
        return defer.succeed(None)

    def raiseUIDNext(self, uidNext: int) -> defer.Deferred:
        """
        Raise UIDNEXT to at least C{uidNext} (see L{IMailboxImport.raiseUIDNext}).
        """
        self._uidNext = max(self._uidNext, int(uidNext))
        return defer.succeed(None)

    def setFlags(self, uids: Iterable[int], flags: Iterable[str], mode: str,
                 unchangedSince: Optional[int] = None) -> defer.Deferred:
        """
        Change flags (see L{IMailbox.setFlags}); the conditional test and
        the change happen in one synchronous step.
        """
        try:
            checkUnchangedSince(unchangedSince)
        except ValueError as e:
            return defer.fail(e)
        flags = list(flags)
        changed = False
        result = []
        modified = []
        for uid in sorted(set(uids)):
            info = self._messages.get(uid)
            if info is None:
                continue
            if unchangedSince is not None and info.modseq > unchangedSince:
                modified.append(uid)
                continue
            new = applyFlags(info.flags, flags, mode)
            if new != info.flags:
                self._modseq += 1
                info = MessageInfo(info.uid, new, info.internalDate, info.size, self._modseq)
                self._messages[uid] = info
                changed = True
            result.append(info)
        if changed:
            self._listeners.notify(self)
        if unchangedSince is not None:
            return defer.succeed(ConditionalFlags(result, modified))
        return defer.succeed(result)

    def expunge(self, uids: Optional[Iterable[int]] = None, requireDeleted: bool = True) -> defer.Deferred:
        candidates = sorted(self._messages) if uids is None else sorted(set(uids) & set(self._messages))
        removed = [
            uid for uid in candidates
            if not requireDeleted or "\\Deleted" in self._messages[uid].flags
        ]
        for uid in removed:
            del self._messages[uid]
            del self._bodies[uid]
            self._unclaimed.discard(uid)
        if removed:
            self._modseq += 1
            self._listeners.notify(self)
        return defer.succeed(removed)

    @defer.inlineCallbacks
    def copyTo(self, uids: Iterable[int], target: IMailbox) -> Generator["defer.Deferred[Any]", Any, List[Tuple[int, int]]]:
        from io import BytesIO

        pairs: List[Tuple[int, int]] = []
        for uid in sorted(set(uids)):
            info = self._messages.get(uid)
            if info is None:
                continue
            newUID = yield target.append(BytesIO(self._bodies[uid]), info.flags, info.internalDate)
            pairs.append((uid, newUID))
        return pairs

    def addListener(self, listener: IMailboxListener) -> None:
        self._listeners.add(listener)

    def removeListener(self, listener: IMailboxListener) -> None:
        self._listeners.remove(listener)

    def lockExclusive(self) -> defer.Deferred:
        if self._locked:
            return defer.fail(MailboxLocked("Mailbox is locked by another session"))
        self._locked = True

        def release() -> None:
            self._locked = False

        return defer.succeed(release)


#: The rights of RFC 4314 (section 2.1), in the order an ACL keeps them.
ACL_RIGHTS = "lrswipkxtea"

#: The ACL identifier that stands for every user (RFC 4314 section 2).
ANYONE = "anyone"


def canonicalACLRights(name: str, rights: Optional[str]) -> str:
    """
    C{rights} with each letter once, in L{ACL_RIGHTS} order (see
    L{IAccountACL.setACL}); L{None} gives C{""}.

    @raise MailboxError: a letter is not one of L{ACL_RIGHTS}.
    """
    if rights is None:
        return ""
    if not isinstance(rights, str) or any(letter not in ACL_RIGHTS for letter in rights):
        raise MailboxError(f"Mailbox {name}: {rights!r} are not access rights (letters of {ACL_RIGHTS})")
    return "".join(letter for letter in ACL_RIGHTS if letter in rights)


def checkACLIdentifier(name: str, identifier: str, owner: str) -> str:
    """
    Refuse an identifier an ACL may not hold (see L{IAccountACL.setACL}).

    @return: C{identifier}.
    @raise MailboxError: it is empty, holds white space or control
        characters, or is the owner's address.
    """
    if not isinstance(identifier, str) or not identifier or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in identifier):
        raise MailboxError(f"Mailbox {name}: {identifier!r} cannot be an ACL identifier")
    if identifier == owner:
        raise MailboxError(f"Mailbox {name}: the owner {owner} always has every right; it is not an ACL entry")
    return identifier


def sharedEntries(owner: str, acls: Dict[str, Dict[str, str]], identifier: str) -> List[Tuple[str, str, str]]:
    """
    What an owner's ACLs (mailbox name to ACL) give C{identifier} and
    C{anyone}: the C{(owner, name, rights)} triples of
    L{IStoreACL.sharedWith}, sorted by name, for any store to reuse.
    """
    if owner == identifier:
        return []
    out = []
    for name in sorted(acls):
        acl = acls[name]
        granted = acl.get(identifier, "") + acl.get(ANYONE, "")
        rights = "".join(letter for letter in ACL_RIGHTS if letter in granted)
        if rights:
            out.append((owner, name, rights))
    return out


def renamedACLs(acls: Dict[str, Dict[str, str]], old: str, new: str) -> Dict[str, Dict[str, str]]:
    """
    The ACLs (mailbox name to ACL) after mailbox C{old} and its children
    were renamed to C{new} (see L{IAccountACL}).
    """
    return {renamedName(name, old, new) or name: acl for name, acl in acls.items()}


@implementer(IAccount, IAccountACL)
class MemoryAccount:
    """
    One account held in memory.
    """

    def __init__(self, address: str, store: Any = None) -> None:
        self.address = address
        self.store = store
        self._mailboxes: Dict[str, MemoryMailbox] = {"INBOX": MemoryMailbox("INBOX")}
        self._noselect: Set[str] = set()
        self._subscriptions: Set[str] = set()
        self._acls: Dict[str, Dict[str, str]] = {}

    def listMailboxes(self) -> defer.Deferred:
        return defer.succeed(
            buildListing({n: m.specialUse for n, m in self._mailboxes.items()}, self._noselect)
        )

    def getMailbox(self, name: str) -> defer.Deferred:
        try:
            name = validateMailboxName(name)
        except MailboxError as e:
            return defer.fail(e)
        if name not in self._mailboxes:
            return defer.fail(NoSuchMailbox(f"Mailbox {name} does not exist"))
        return defer.succeed(self._mailboxes[name])

    def createMailbox(self, name: str, specialUse: Optional[str] = None) -> defer.Deferred:
        try:
            name = validateMailboxName(name)
        except MailboxError as e:
            return defer.fail(e)
        if name in self._mailboxes:
            return defer.fail(MailboxExists(f"Mailbox {name} exists already"))
        for parent in parentNames(name):
            if parent not in self._mailboxes:
                self._noselect.discard(parent)
                self._mailboxes[parent] = MemoryMailbox(parent)
        self._noselect.discard(name)
        self._mailboxes[name] = MemoryMailbox(name, specialUse)
        return defer.succeed(None)

    def _hasChildren(self, name: str) -> bool:
        prefix = name + "/"
        return any(n.startswith(prefix) for n in list(self._mailboxes) + list(self._noselect))

    def deleteMailbox(self, name: str) -> defer.Deferred:
        try:
            name = validateMailboxName(name)
        except MailboxError as e:
            return defer.fail(e)
        if name == "INBOX":
            return defer.fail(MailboxError("INBOX cannot be deleted"))
        if name not in self._mailboxes:
            if name in self._noselect:
                if self._hasChildren(name):
                    return defer.fail(MailboxError(f"Mailbox {name} has children and holds no mail"))
                self._noselect.discard(name)
                return defer.succeed(None)
            return defer.fail(NoSuchMailbox(f"Mailbox {name} does not exist"))
        mailbox = self._mailboxes.pop(name)
        self._acls.pop(name, None)
        if self._hasChildren(name):
            self._noselect.add(name)
        mailbox._messages.clear()
        mailbox._bodies.clear()
        mailbox._listeners.notify(mailbox)
        return defer.succeed(None)

    def renameMailbox(self, old: str, new: str) -> defer.Deferred:
        try:
            old = validateMailboxName(old)
            new = validateMailboxName(new)
        except MailboxError as e:
            return defer.fail(e)
        if old not in self._mailboxes and old not in self._noselect:
            return defer.fail(NoSuchMailbox(f"Mailbox {old} does not exist"))
        if new in self._mailboxes or new in self._noselect:
            return defer.fail(MailboxExists(f"Mailbox {new} exists already"))
        if renamedName(new, old, new) is not None and new != old and new.startswith(old + "/"):
            return defer.fail(MailboxError("A mailbox cannot be moved into itself"))
        if old == "INBOX":
            inbox = self._mailboxes["INBOX"]
            d = self.createMailbox(new)
            target = self._mailboxes[new]
            target._bodies, inbox._bodies = inbox._bodies, {}
            target._messages, inbox._messages = inbox._messages, {}
            target._uidNext = inbox._uidNext
            inbox._unclaimed.clear()
            inbox._listeners.notify(inbox)
            return d
        for parent in parentNames(new):
            if parent not in self._mailboxes:
                self._mailboxes[parent] = MemoryMailbox(parent)
                self._noselect.discard(parent)
        for name in sorted(self._mailboxes):
            moved = renamedName(name, old, new)
            if moved is not None:
                mailbox = self._mailboxes.pop(name)
                mailbox.name = moved
                self._mailboxes[moved] = mailbox
        for name in sorted(self._noselect):
            moved = renamedName(name, old, new)
            if moved is not None:
                self._noselect.discard(name)
                self._noselect.add(moved)
        self._acls = renamedACLs(self._acls, old, new)
        return defer.succeed(None)

    def subscribe(self, name: str) -> defer.Deferred:
        try:
            self._subscriptions.add(validateMailboxName(name))
        except MailboxError as e:
            return defer.fail(e)
        return defer.succeed(None)

    def unsubscribe(self, name: str) -> defer.Deferred:
        try:
            name = validateMailboxName(name)
        except MailboxError as e:
            return defer.fail(e)
        if name not in self._subscriptions:
            return defer.fail(NoSuchMailbox(f"Not subscribed to {name}"))
        self._subscriptions.discard(name)
        return defer.succeed(None)

    def listSubscriptions(self) -> defer.Deferred:
        return defer.succeed(sorted(self._subscriptions))

    def _aclName(self, name: str) -> str:
        name = validateMailboxName(name)
        if name not in self._mailboxes:
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        return name

    def getACL(self, name: str) -> defer.Deferred:
        """
        See L{IAccountACL.getACL}.
        """
        try:
            name = self._aclName(name)
        except MailboxError as e:
            return defer.fail(e)
        return defer.succeed(dict(self._acls.get(name, {})))

    def setACL(self, name: str, identifier: str, rights: Optional[str]) -> defer.Deferred:
        """
        See L{IAccountACL.setACL}.
        """
        try:
            name = self._aclName(name)
            checkACLIdentifier(name, identifier, self.address)
            rights = canonicalACLRights(name, rights)
        except MailboxError as e:
            return defer.fail(e)
        acl = self._acls.setdefault(name, {})
        if rights:
            acl[identifier] = rights
        else:
            acl.pop(identifier, None)
            if not acl:
                del self._acls[name]
        return defer.succeed(None)


@implementer(IStore, IStoreACL)
class MemoryStore:
    """
    Accounts held in memory, gone at exit.
    """

    def __init__(self) -> None:
        self._accounts: Dict[str, MemoryAccount] = {}

    def getAccount(self, address: str, create: bool = False) -> defer.Deferred:
        account = self._accounts.get(address)
        if account is None:
            if not create:
                return defer.fail(NoSuchAccount(f"No account {address}"))
            account = self._accounts[address] = MemoryAccount(address, self)
            for name, use in DEFAULT_MAILBOXES:
                account.createMailbox(name, use)
                account.subscribe(name)
            account.subscribe("INBOX")
        return defer.succeed(account)

    def hasAccount(self, address: str) -> defer.Deferred:
        return defer.succeed(address in self._accounts)

    def listAccounts(self) -> defer.Deferred:
        return defer.succeed(sorted(self._accounts))

    def hasDomain(self, domain: str) -> defer.Deferred:
        suffix = "@" + domain
        return defer.succeed(any(address.endswith(suffix) for address in self._accounts))

    def sharedWith(self, identifier: str) -> defer.Deferred:
        """
        See L{IStoreACL.sharedWith}: every account's ACLs are looked at
        (they are in memory).
        """
        out: List[Tuple[str, str, str]] = []
        for address in sorted(self._accounts):
            out.extend(sharedEntries(address, self._accounts[address]._acls, identifier))
        return defer.succeed(out)

    def deleteAccount(self, address: str) -> defer.Deferred:
        if self._accounts.pop(address, None) is None:
            return defer.fail(NoSuchAccount(f"No account {address}"))
        return defer.succeed(None)

    def close(self) -> defer.Deferred:
        return defer.succeed(None)


@implementer(IStoreFactory, IPlugin)
class MemoryStoreFactory:
    """
    The C{memory} store plugin.
    """

    storeName = "memory"
    storeHelp = "Keeps all mail in memory; everything is lost at exit. For trying mailplat out and for tests."
    argStringFormat = "No arguments."

    def makeStore(self, argstring: str, dataDir: str) -> MemoryStore:
        from mailplat.errors import ConfigError

        if argstring:
            raise ConfigError(f"store 'memory' takes no arguments, got {argstring!r}")
        return MemoryStore()

