"""
The SQL store: accounts, mailboxes and messages in SQLite or PostgreSQL
(schema in L{mailplat.store.sql.schema}, threads and connections in
L{mailplat.store.sql.database}).

Every method runs its SQL in one transaction on a worker thread and fires
its Deferred on the reactor thread after the commit, so an append is
durable before its UID is handed out.  UIDs and modseqs are allocated with
C{UPDATE mailboxes SET uidnext = uidnext + n ... RETURNING} inside the
transaction that stores the message, which serialises allocation across
processes (the row lock on PostgreSQL, C{BEGIN IMMEDIATE} on SQLite).

Message content is stored once per distinct wire form (sha256), shared by
every mailbox that holds it, and freed when the last copy is expunged.  A
copy inside the store copies no bytes.

A store keeps one L{SQLMailbox} object per mailbox in use, so listeners
hear every change made in the process at once.  Changes made by another
process are heard through PostgreSQL C{NOTIFY}, or, on SQLite, by comparing
a mailbox's HIGHESTMODSEQ and UIDNEXT whenever it is read and every
L{SQLStore.pollInterval} seconds while it has listeners.
"""

import hashlib
import json
import time
import weakref
from collections import Counter
from io import BytesIO
from typing import Any, BinaryIO, Callable, Dict, FrozenSet, Generator, Iterable, List, Optional, Set, Tuple

from twisted.internet import defer, task
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
from mailplat.interfaces import (
    ConditionalFlags,
    IAccount,
    IAccountACL,
    IMailbox,
    IMailboxImport,
    IMailboxListener,
    IStore,
    IStoreACL,
)
from mailplat.mailbox import (
    DEFAULT_MAILBOXES,
    MailboxStatus,
    MessageInfo,
    SharedInfos,
    applyFlags,
    buildListing,
    parentNames,
    renamedName,
    validateMailboxName,
)
from mailplat.store.memory import (
    ANYONE,
    ListenerSet,
    canonicalACLRights,
    checkACLIdentifier,
    sharedEntries,
    checkImportedModseq,
    checkImportedUID,
    checkImportedUIDValidity,
    checkUnchangedSince,
)
from mailplat.store.sql.database import Database, Transaction, chunks, inClause
from mailplat.store.sql.schema import DELETED_BIT, SEEN_BIT, SYSTEM_FLAG_BITS
from mailplat.uidvalidity import newUIDValidity

log = Logger()

CHUNK = 65536

_BIT_FLAGS = {bit: flag for flag, bit in SYSTEM_FLAG_BITS.items()}

# Releases of exclusive locks still under way in this process, by database
# and mailbox id: a lock attempt by any store of the process on the same
# database waits for them, so a lock released is free at once for every
# session of the process.
_releasing: Dict[Tuple[str, int], defer.Deferred] = {}

# The state a mailbox is compared by to notice changes: (highestmodseq,
# uidnext), or None once the mailbox is gone.
State = Optional[Tuple[int, int]]


def encodeFlags(flags: Iterable[str]) -> Tuple[int, str]:
    """
    The C{(sysflags, keywords)} columns of a set of flags.
    """
    bits = 0
    keywords = []
    for flag in flags:
        bit = SYSTEM_FLAG_BITS.get(flag)
        if bit is None:
            keywords.append(flag)
        else:
            bits |= bit
    return bits, json.dumps(sorted(keywords), ensure_ascii=False) if keywords else ""


def decodeFlags(bits: int, keywords: str) -> FrozenSet[str]:
    """
    The flags of a message from its C{(sysflags, keywords)} columns.
    """
    flags = {flag for bit, flag in _BIT_FLAGS.items() if bits & bit}
    if keywords:
        flags.update(json.loads(keywords))
    return frozenset(flags)


def _info(row: tuple) -> MessageInfo:
    uid, bits, keywords, internalDate, size, modseq = row
    return MessageInfo(
        uid=int(uid),
        flags=decodeFlags(int(bits), keywords),
        internalDate=float(internalDate),
        size=int(size),
        modseq=int(modseq),
    )


_INFO_COLUMNS = "uid, sysflags, keywords, internal_date, size, modseq"


def _readSource(source: BinaryIO) -> Tuple[bytes, str]:
    """
    Read a message source to its end; its bytes and their sha256 (hex).
    """
    digest = hashlib.sha256()
    parts = []
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            break
        digest.update(chunk)
        parts.append(chunk)
    return b"".join(parts), digest.hexdigest()


# Work done inside transactions.  Each takes the Transaction first; the
# ones that change a mailbox lock its row first, so that concurrent
# transactions on PostgreSQL take locks in one order.


def _lockMailbox(txn: Transaction, mailboxId: int) -> Tuple[int, int]:
    """
    Lock a selectable mailbox's row; its (highestmodseq, uidnext).

    @raise NoSuchMailbox: it is gone.
    """
    row = txn.execute(
        "SELECT highestmodseq, uidnext FROM mailboxes WHERE id = ? AND noselect = 0" + txn.dialect.forUpdate,
        (mailboxId,),
    ).fetchone()
    if row is None:
        raise NoSuchMailbox("Mailbox was deleted")
    return int(row[0]), int(row[1])


def _state(txn: Transaction, mailboxId: int) -> State:
    row = txn.execute(
        "SELECT highestmodseq, uidnext FROM mailboxes WHERE id = ? AND noselect = 0", (mailboxId,)
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def _allocate(txn: Transaction, mailboxId: int, count: int) -> Tuple[int, int, State]:
    """
    Take C{count} UIDs and one modseq of a mailbox: (first UID, modseq, new
    state).
    """
    row = txn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1"
        " WHERE id = ? AND noselect = 0 RETURNING uidnext, highestmodseq",
        (count, mailboxId),
    ).fetchone()
    if row is None:
        raise NoSuchMailbox("Mailbox was deleted")
    uidnext, modseq = int(row[0]), int(row[1])
    return uidnext - count, modseq, (modseq, uidnext)


def _storeContent(txn: Transaction, digest: str, data: bytes) -> int:
    """
    One more reference to the content C{data}; the id of its C{messages}
    row, stored now if it was not there.
    """
    row = txn.execute("UPDATE messages SET refcount = refcount + 1 WHERE hash = ? RETURNING id", (digest,)).fetchone()
    if row is not None:
        return int(row[0])
    txn.execute("INSERT INTO blobs (hash, data) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING", (digest, data))
    row = txn.execute(
        "INSERT INTO messages (hash, size, refcount) VALUES (?, ?, 1)"
        " ON CONFLICT (hash) DO UPDATE SET refcount = messages.refcount + 1 RETURNING id",
        (digest, len(data)),
    ).fetchrow()
    return int(row[0])


def _release(txn: Transaction, messageIds: Iterable[int]) -> None:
    """
    Drop one reference per item of C{messageIds} (after their
    C{mailbox_messages} rows are gone); content nobody holds any more is
    deleted.  Ids are handled in ascending order, so that two transactions
    never wait for each other's rows.
    """
    for messageId, count in sorted(Counter(messageIds).items()):
        row = txn.execute(
            "UPDATE messages SET refcount = refcount - ? WHERE id = ? RETURNING refcount, hash", (count, messageId)
        ).fetchone()
        if row is not None and int(row[0]) <= 0:
            txn.execute("DELETE FROM messages WHERE id = ?", (messageId,))
            txn.execute("DELETE FROM blobs WHERE hash = ?", (row[1],))


def _emptyMailbox(txn: Transaction, mailboxId: int) -> None:
    """
    Delete every message of a mailbox.
    """
    ids = [int(r[0]) for r in txn.execute("SELECT message_id FROM mailbox_messages WHERE mailbox_id = ?", (mailboxId,)).fetchall()]
    txn.execute("DELETE FROM mailbox_messages WHERE mailbox_id = ?", (mailboxId,))
    _release(txn, ids)


def _insertMessage(
    txn: Transaction, mailboxId: int, uid: int, messageId: int, flags: Iterable[str], internalDate: float, size: int, modseq: int
) -> None:
    bits, keywords = encodeFlags(flags)
    txn.execute(
        "INSERT INTO mailbox_messages (mailbox_id, uid, message_id, sysflags, keywords, internal_date, size, modseq, recent)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
        (mailboxId, uid, messageId, bits, keywords, internalDate, size, modseq),
    )


def _nextUIDValidity(txn: Transaction, accountId: int) -> int:
    """
    A UIDVALIDITY for a new mailbox of the account, above every one it
    handed out before.
    """
    row = txn.execute("SELECT last_uidvalidity FROM accounts WHERE id = ?" + txn.dialect.forUpdate, (accountId,)).fetchone()
    if row is None:
        raise NoSuchAccount("Account was deleted")
    value = max(newUIDValidity(), int(row[0]) + 1)
    txn.execute("UPDATE accounts SET last_uidvalidity = ? WHERE id = ?", (value, accountId))
    return value


def _createRow(txn: Transaction, accountId: int, name: str, specialUse: Optional[str] = None) -> int:
    """
    Insert a selectable mailbox row (replacing a \\Noselect row of that
    name); its id.
    """
    txn.execute("DELETE FROM mailboxes WHERE account_id = ? AND name = ? AND noselect = 1", (accountId, name))
    row = txn.execute(
        "INSERT INTO mailboxes (account_id, name, uidvalidity, special_use) VALUES (?, ?, ?, ?) RETURNING id",
        (accountId, name, _nextUIDValidity(txn, accountId), specialUse),
    ).fetchrow()
    return int(row[0])


def _names(txn: Transaction, accountId: int) -> Dict[str, Tuple[int, bool]]:
    """
    Every mailbox row of an account: name to (id, noselect).
    """
    rows = txn.execute("SELECT name, id, noselect FROM mailboxes WHERE account_id = ?", (accountId,)).fetchall()
    return {r[0]: (int(r[1]), bool(r[2])) for r in rows}


def _hasChildren(names: Iterable[str], name: str) -> bool:
    prefix = name + "/"
    return any(n.startswith(prefix) for n in names)


@implementer(IMailbox, IMailboxImport)
class SQLMailbox:
    """
    One mailbox of a L{SQLStore}; the store keeps one object per mailbox
    in use.

    @ivar mailboxId: the row id (the mailbox's identity in the database).
    """

    def __init__(self, store: "SQLStore", accountId: int, mailboxId: int, name: str, uidValidity: int, state: State) -> None:
        self.store = store
        self.accountId = accountId
        self.mailboxId = mailboxId
        self.name = name
        self.uidValidity = uidValidity
        self._state = state
        self._listeners = ListenerSet()
        self._registered: List[IMailboxListener] = []
        # Listings hand out shared infos (see SharedInfos).
        self._infos = SharedInfos()
        self._poll: Optional[task.LoopingCall] = None

    def __repr__(self) -> str:
        return f"<SQLMailbox {self.name!r} id={self.mailboxId}>"

    # change notification

    def _changed(self, state: State) -> None:
        """
        This process changed the mailbox (state is after the change): tell
        the listeners.
        """
        if self._state is not None and state is not None:
            self._state = max(self._state, state)
        self._listeners.notify(self)

    def _observed(self, state: State) -> None:
        """
        The mailbox was read in C{state}: tell the listeners if it moved
        past what was last seen (another process changed it).  Both parts
        of the state only ever grow, so a read that was overtaken by a
        later change does not count as one.
        """
        if self._state is None:
            return
        if state is None:
            self._state = None
            self._listeners.notify(self)
            self._stopPolling()
        elif state[0] > self._state[0] or state[1] > self._state[1]:
            self._state = (max(state[0], self._state[0]), max(state[1], self._state[1]))
            self._listeners.notify(self)

    def checkForChanges(self) -> defer.Deferred:
        """
        Read the mailbox's state and tell the listeners if another process
        changed it (the poll, and the handler of PostgreSQL notifications).
        """
        d = self.store._db.run(_state, self.mailboxId)
        d.addCallback(self._observed)
        d.addErrback(lambda f: log.failure("checking {mailbox!r} for changes failed", f, mailbox=self))
        return d

    def addListener(self, listener: IMailboxListener) -> None:
        self._listeners.add(listener)
        if listener not in self._registered:
            self._registered.append(listener)
        if self.store._db.polls and self._poll is None and self._state is not None:
            self._poll = task.LoopingCall(self.checkForChanges)
            self._poll.clock = self.store.clock
            self._poll.start(self.store.pollInterval, now=False)
            self.store._polling.add(self)

    def removeListener(self, listener: IMailboxListener) -> None:
        self._listeners.remove(listener)
        if listener in self._registered:
            self._registered.remove(listener)
        if not self._registered:
            self._stopPolling()

    def _stopPolling(self) -> None:
        poll, self._poll = self._poll, None
        if poll is not None and poll.running:
            poll.stop()
        self.store._polling.discard(self)

    def hasListeners(self) -> bool:
        """
        Whether anyone listens to this mailbox.
        """
        return bool(self._registered)

    # reading

    def status(self) -> defer.Deferred:
        def read(txn: Transaction) -> Tuple[State, Optional[MailboxStatus]]:
            state = _state(txn, self.mailboxId)
            if state is None:
                return None, None
            row = txn.execute(
                "SELECT COUNT(*),"
                f" CAST(COALESCE(SUM(CASE WHEN (sysflags & {SEEN_BIT}) = 0 THEN 1 ELSE 0 END), 0) AS BIGINT),"
                " CAST(COALESCE(SUM(recent), 0) AS BIGINT),"
                " CAST(COALESCE(SUM(size), 0) AS BIGINT)"
                " FROM mailbox_messages WHERE mailbox_id = ?",
                (self.mailboxId,),
            ).fetchrow()
            return state, MailboxStatus(
                messages=int(row[0]),
                recent=int(row[2]),
                unseen=int(row[1]),
                uidNext=state[1],
                uidValidity=self.uidValidity,
                highestModseq=state[0],
                size=int(row[3]),
            )

        return self.store._db.run(read).addCallback(self._afterRead)

    def _afterRead(self, result: Tuple[State, Any]) -> Any:
        state, value = result
        self._observed(state)
        if state is None:
            raise NoSuchMailbox(f"Mailbox {self.name} was deleted")
        return value

    def listMessages(self) -> defer.Deferred:
        def read(txn: Transaction) -> Tuple[State, List[MessageInfo]]:
            state = _state(txn, self.mailboxId)
            if state is None:
                return None, []
            rows = txn.execute(
                f"SELECT {_INFO_COLUMNS} FROM mailbox_messages WHERE mailbox_id = ? ORDER BY uid", (self.mailboxId,)
            ).fetchall()
            shared = self._infos
            infos = []
            for row in rows:
                info = shared.get(row[0], row)
                if info is None:
                    info = shared.keep(row, _info(row))
                infos.append(info)
            shared.listed(infos)
            return state, infos

        return self.store._db.run(read).addCallback(self._afterRead)

    def openMessage(self, uid: int) -> defer.Deferred:
        def read(txn: Transaction) -> bytes:
            row = txn.execute(
                "SELECT b.data FROM mailbox_messages mm"
                " JOIN messages m ON m.id = mm.message_id"
                " JOIN blobs b ON b.hash = m.hash"
                " WHERE mm.mailbox_id = ? AND mm.uid = ?",
                (self.mailboxId, uid),
            ).fetchone()
            if row is None:
                raise NoSuchMessage(f"No message with UID {uid}")
            return bytes(row[0])

        return self.store._db.run(read).addCallback(BytesIO)

    # changing

    def claimRecent(self) -> defer.Deferred:
        def claim(txn: Transaction) -> List[int]:
            _lockMailbox(txn, self.mailboxId)
            rows = txn.execute(
                "UPDATE mailbox_messages SET recent = 0 WHERE mailbox_id = ? AND recent = 1 RETURNING uid", (self.mailboxId,)
            ).fetchall()
            return sorted(int(r[0]) for r in rows)

        return self.store._db.run(claim, write=True)

    @defer.inlineCallbacks
    def append(
        self, source: BinaryIO, flags: Iterable[str] = (), internalDate: Optional[float] = None
    ) -> Generator["defer.Deferred[Any]", Any, int]:
        flags = applyFlags(frozenset(), flags, "set")
        internalDate = time.time() if internalDate is None else float(internalDate)
        data, digest = yield self.store._db.runBlocking(_readSource, source)

        def store(txn: Transaction) -> Tuple[int, State]:
            uid, modseq, state = _allocate(txn, self.mailboxId, 1)
            messageId = _storeContent(txn, digest, data)
            _insertMessage(txn, self.mailboxId, uid, messageId, flags, internalDate, len(data), modseq)
            txn.notify(self.mailboxId)
            return uid, state

        uid, state = yield self.store._db.run(store, write=True)
        self._changed(state)
        return uid

    @defer.inlineCallbacks
    def importMessage(self, uid: int, source: BinaryIO, flags: Iterable[str] = (), internalDate: Optional[float] = None,
                      modseq: Optional[int] = None) -> Generator["defer.Deferred[Any]", Any, int]:
        """
        Add a message under a given UID, and modseq when given (see
        L{IMailboxImport.importMessage}), in one transaction that checks
        and moves UIDNEXT and HIGHESTMODSEQ under the mailbox's row lock.
        """
        if modseq is not None:
            checkImportedModseq(self.name, modseq)
        flags = applyFlags(frozenset(), flags, "set")
        internalDate = time.time() if internalDate is None else float(internalDate)
        data, digest = yield self.store._db.runBlocking(_readSource, source)

        def store(txn: Transaction) -> State:
            highest, uidNext = _lockMailbox(txn, self.mailboxId)
            checkImportedUID(self.name, uid, uidNext)
            given = highest + 1 if modseq is None else modseq
            txn.execute(
                "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ? AND noselect = 0",
                (uid + 1, max(highest, given), self.mailboxId),
            )
            messageId = _storeContent(txn, digest, data)
            _insertMessage(txn, self.mailboxId, uid, messageId, flags, internalDate, len(data), given)
            txn.notify(self.mailboxId)
            return (max(highest, given), uid + 1)

        state = yield self.store._db.run(store, write=True)
        self._changed(state)
        return uid

    @defer.inlineCallbacks
    def setUIDValidity(self, uidValidity: int) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Give the empty mailbox another UIDVALIDITY (see
        L{IMailboxImport.setUIDValidity}); the account's last UIDVALIDITY
        is raised to it, so a mailbox made later still gets a higher one.
        """

        def change(txn: Transaction) -> None:
            _lockMailbox(txn, self.mailboxId)
            row = txn.execute("SELECT COUNT(*) FROM mailbox_messages WHERE mailbox_id = ?", (self.mailboxId,)).fetchrow()
            checkImportedUIDValidity(self.name, uidValidity, int(row[0]))
            txn.execute("UPDATE mailboxes SET uidvalidity = ? WHERE id = ?", (uidValidity, self.mailboxId))
            txn.execute(
                "UPDATE accounts SET last_uidvalidity = ? WHERE id = ? AND last_uidvalidity < ?",
                (uidValidity, self.accountId, uidValidity),
            )

        yield self.store._db.run(change, write=True)
        self.uidValidity = int(uidValidity)

    @defer.inlineCallbacks
    def raiseUIDNext(self, uidNext: int) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Raise UIDNEXT to at least C{uidNext} (see L{IMailboxImport.raiseUIDNext}).
        """

        def change(txn: Transaction) -> State:
            _, current = _lockMailbox(txn, self.mailboxId)
            if uidNext <= current:
                return None
            txn.execute("UPDATE mailboxes SET uidnext = ? WHERE id = ?", (int(uidNext), self.mailboxId))
            return _state(txn, self.mailboxId)

        state = yield self.store._db.run(change, write=True)
        if state is not None:
            self._changed(state)

    @defer.inlineCallbacks
    def raiseHighestModseq(self, modseq: int) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Raise HIGHESTMODSEQ to at least C{modseq} (see
        L{IMailboxImport.raiseHighestModseq}).
        """
        checkImportedModseq(self.name, modseq)

        def change(txn: Transaction) -> State:
            current, _ = _lockMailbox(txn, self.mailboxId)
            if modseq <= current:
                return None
            txn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (int(modseq), self.mailboxId))
            return _state(txn, self.mailboxId)

        state = yield self.store._db.run(change, write=True)
        if state is not None:
            self._changed(state)

    @defer.inlineCallbacks
    def setFlags(
        self, uids: Iterable[int], flags: Iterable[str], mode: str, unchangedSince: Optional[int] = None
    ) -> Generator["defer.Deferred[Any]", Any, Any]:
        """
        Change flags (see L{IMailbox.setFlags}) in one transaction under
        the mailbox's row lock: the C{unchangedSince} test reads the
        modseqs after the lock is taken, and the update repeats it
        (C{modseq <= ?}), so no other process or node changes a message
        between the test and the change.
        """
        flags = list(flags)
        if mode not in ("set", "add", "remove"):
            raise ValueError(f"unknown flag mode {mode!r}")
        checkUnchangedSince(unchangedSince)
        wanted = sorted(set(int(u) for u in uids))
        modified: List[int] = []

        def change(txn: Transaction) -> Tuple[List[MessageInfo], State]:
            del modified[:]
            highest, uidnext = _lockMailbox(txn, self.mailboxId)
            current: List[MessageInfo] = []
            for part in chunks(wanted):
                rows = txn.execute(
                    f"SELECT {_INFO_COLUMNS} FROM mailbox_messages WHERE mailbox_id = ? AND uid IN {inClause(len(part))}",
                    (self.mailboxId, *part),
                ).fetchall()
                current.extend(_info(r) for r in rows)
            current.sort(key=lambda i: i.uid)
            result = []
            updates: List[tuple] = []
            modseq = highest + 1
            for info in current:
                if unchangedSince is not None and info.modseq > unchangedSince:
                    modified.append(info.uid)
                    continue
                new = applyFlags(info.flags, flags, mode)
                if new != info.flags:
                    info = MessageInfo(info.uid, new, info.internalDate, info.size, modseq)
                    bits, keywords = encodeFlags(new)
                    updates.append((bits, keywords, modseq, self.mailboxId, info.uid))
                result.append(info)
            if not updates:
                return result, None
            txn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, self.mailboxId))
            if unchangedSince is not None:
                updates = [u + (unchangedSince,) for u in updates]
            txn.executemany(
                "UPDATE mailbox_messages SET sysflags = ?, keywords = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?"
                + (" AND modseq <= ?" if unchangedSince is not None else ""),
                updates,
            )
            txn.notify(self.mailboxId)
            return result, (modseq, uidnext)

        result, state = yield self.store._db.run(change, write=True)
        if state is not None:
            self._changed(state)
        if unchangedSince is not None:
            return ConditionalFlags(result, list(modified))
        return result

    @defer.inlineCallbacks
    def expunge(
        self, uids: Optional[Iterable[int]] = None, requireDeleted: bool = True
    ) -> Generator["defer.Deferred[Any]", Any, List[int]]:
        wanted = None if uids is None else sorted(set(int(u) for u in uids))

        def remove(txn: Transaction) -> Tuple[List[int], State]:
            highest, uidnext = _lockMailbox(txn, self.mailboxId)
            condition = f" AND (sysflags & {DELETED_BIT}) <> 0" if requireDeleted else ""
            rows: List[tuple] = []
            if wanted is None:
                rows = txn.execute(
                    "SELECT uid, message_id FROM mailbox_messages WHERE mailbox_id = ?" + condition, (self.mailboxId,)
                ).fetchall()
            else:
                for part in chunks(wanted):
                    rows.extend(
                        txn.execute(
                            "SELECT uid, message_id FROM mailbox_messages"
                            f" WHERE mailbox_id = ? AND uid IN {inClause(len(part))}" + condition,
                            (self.mailboxId, *part),
                        ).fetchall()
                    )
            if not rows:
                return [], None
            removed = sorted(int(r[0]) for r in rows)
            for part in chunks(removed):
                txn.execute(
                    f"DELETE FROM mailbox_messages WHERE mailbox_id = ? AND uid IN {inClause(len(part))}",
                    (self.mailboxId, *part),
                )
            _release(txn, [int(r[1]) for r in rows])
            txn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (highest + 1, self.mailboxId))
            txn.notify(self.mailboxId)
            return removed, (highest + 1, uidnext)

        removed, state = yield self.store._db.run(remove, write=True)
        if state is not None:
            self._changed(state)
        return removed

    @defer.inlineCallbacks
    def copyTo(self, uids: Iterable[int], target: IMailbox) -> Generator["defer.Deferred[Any]", Any, List[tuple]]:
        wanted = sorted(set(int(u) for u in uids))
        if not (isinstance(target, SQLMailbox) and target.store._db is self.store._db):
            pairs = []
            chosen = set(wanted)
            for info in (yield self.listMessages()):
                if info.uid not in chosen:
                    continue
                try:
                    f = yield self.openMessage(info.uid)
                except NoSuchMessage:
                    continue
                try:
                    newUID = yield target.append(f, info.flags, info.internalDate)
                finally:
                    f.close()
                pairs.append((info.uid, newUID))
            return pairs

        def copy(txn: Transaction) -> Tuple[List[Tuple[int, int]], State]:
            # Only the source's rows are read; the target's row is the one
            # locked (by _allocate).
            rows: List[tuple] = []
            for part in chunks(wanted):
                rows.extend(
                    txn.execute(
                        "SELECT uid, message_id, sysflags, keywords, internal_date, size FROM mailbox_messages"
                        f" WHERE mailbox_id = ? AND uid IN {inClause(len(part))}",
                        (self.mailboxId, *part),
                    ).fetchall()
                )
            if _state(txn, self.mailboxId) is None:
                raise NoSuchMailbox(f"Mailbox {self.name} was deleted")
            if not rows:
                return [], None
            rows.sort(key=lambda r: r[0])
            first, modseq, state = _allocate(txn, target.mailboxId, len(rows))
            for messageId, count in sorted(Counter(int(r[1]) for r in rows).items()):
                txn.execute("UPDATE messages SET refcount = refcount + ? WHERE id = ?", (count, messageId))
            txn.executemany(
                "INSERT INTO mailbox_messages (mailbox_id, uid, message_id, sysflags, keywords, internal_date, size, modseq, recent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                [
                    (target.mailboxId, first + i, r[1], r[2], r[3], r[4], r[5], modseq)
                    for i, r in enumerate(rows)
                ],
            )
            txn.notify(target.mailboxId)
            return [(int(r[0]), first + i) for i, r in enumerate(rows)], state

        pairs, state = yield self.store._db.run(copy, write=True)
        if state is not None:
            target._changed(state)
        return pairs

    def lockExclusive(self) -> defer.Deferred:
        return self.store._lock(self)


@implementer(IAccount, IAccountACL)
class SQLAccount:
    """
    One account of a L{SQLStore}.

    @ivar accountId: the row id.
    """

    def __init__(self, store: "SQLStore", accountId: int, address: str) -> None:
        self.store = store
        self.accountId = accountId
        self.address = address

    def __repr__(self) -> str:
        return f"<SQLAccount {self.address!r}>"

    def _run(self, fn: Callable[..., Any], *args: Any, write: bool = False) -> defer.Deferred:
        return self.store._db.run(fn, *args, write=write)

    def _check(self, txn: Transaction) -> None:
        if txn.execute("SELECT 1 FROM accounts WHERE id = ?", (self.accountId,)).fetchone() is None:
            raise NoSuchAccount(f"No account {self.address}")

    def listMailboxes(self) -> defer.Deferred:
        def read(txn: Transaction) -> list:
            rows = txn.execute(
                "SELECT name, special_use, noselect FROM mailboxes WHERE account_id = ?", (self.accountId,)
            ).fetchall()
            return buildListing({r[0]: r[1] for r in rows if not r[2]}, [r[0] for r in rows if r[2]])

        return self._run(read)

    @defer.inlineCallbacks
    def getMailbox(self, name: str) -> Generator["defer.Deferred[Any]", Any, IMailbox]:
        name = validateMailboxName(name)

        def read(txn: Transaction) -> Optional[tuple]:
            return txn.execute(
                "SELECT id, uidvalidity, highestmodseq, uidnext FROM mailboxes"
                " WHERE account_id = ? AND name = ? AND noselect = 0",
                (self.accountId, name),
            ).fetchone()

        row = yield self._run(read)
        if row is None:
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        return self.store._mailbox(self.accountId, int(row[0]), name, int(row[1]), (int(row[2]), int(row[3])))

    @defer.inlineCallbacks
    def createMailbox(self, name: str, specialUse: Optional[str] = None) -> Generator["defer.Deferred[Any]", Any, None]:
        name = validateMailboxName(name)

        def create(txn: Transaction) -> None:
            self._check(txn)
            names = _names(txn, self.accountId)
            if name in names and not names[name][1]:
                raise MailboxExists(f"Mailbox {name} exists already")
            for parent in parentNames(name):
                if parent not in names or names[parent][1]:
                    _createRow(txn, self.accountId, parent)
            _createRow(txn, self.accountId, name, specialUse)

        yield self._run(create, write=True)

    @defer.inlineCallbacks
    def deleteMailbox(self, name: str) -> Generator["defer.Deferred[Any]", Any, None]:
        name = validateMailboxName(name)
        if name == "INBOX":
            raise MailboxError("INBOX cannot be deleted")

        def delete(txn: Transaction) -> Optional[int]:
            names = _names(txn, self.accountId)
            if name not in names:
                raise NoSuchMailbox(f"Mailbox {name} does not exist")
            mailboxId, noselect = names[name]
            children = _hasChildren(names, name)
            if noselect:
                if children:
                    raise MailboxError(f"Mailbox {name} has children and holds no mail")
                txn.execute("DELETE FROM mailbox_acl WHERE mailbox_id = ?", (mailboxId,))
                txn.execute("DELETE FROM mailboxes WHERE id = ?", (mailboxId,))
                return None
            _lockMailbox(txn, mailboxId)
            _emptyMailbox(txn, mailboxId)
            txn.execute("DELETE FROM mailbox_acl WHERE mailbox_id = ?", (mailboxId,))
            txn.execute("DELETE FROM mailboxes WHERE id = ?", (mailboxId,))
            if children:
                txn.execute(
                    "INSERT INTO mailboxes (account_id, name, uidvalidity, noselect) VALUES (?, ?, 0, 1)", (self.accountId, name)
                )
            txn.notify(mailboxId)
            return mailboxId

        mailboxId = yield self._run(delete, write=True)
        if mailboxId is not None:
            self.store._gone(mailboxId)

    @defer.inlineCallbacks
    def renameMailbox(self, old: str, new: str) -> Generator["defer.Deferred[Any]", Any, None]:
        old = validateMailboxName(old)
        new = validateMailboxName(new)

        def rename(txn: Transaction) -> Tuple[Dict[int, str], List[Tuple[int, State]]]:
            names = _names(txn, self.accountId)
            if old not in names:
                raise NoSuchMailbox(f"Mailbox {old} does not exist")
            if new in names:
                raise MailboxExists(f"Mailbox {new} exists already")
            if new.startswith(old + "/"):
                raise MailboxError("A mailbox cannot be moved into itself")
            for parent in parentNames(new):
                if parent not in names or names[parent][1]:
                    _createRow(txn, self.accountId, parent)
            if old == "INBOX":
                inboxId = names["INBOX"][0]
                highest, uidnext = _lockMailbox(txn, inboxId)
                targetId = _createRow(txn, self.accountId, new)
                txn.execute(
                    "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?", (uidnext, highest + 1, targetId)
                )
                txn.execute("UPDATE mailbox_messages SET mailbox_id = ? WHERE mailbox_id = ?", (targetId, inboxId))
                txn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (highest + 1, inboxId))
                txn.notify(inboxId)
                return {}, [(inboxId, (highest + 1, uidnext))]
            moved: Dict[int, str] = {}
            for name, (mailboxId, _) in sorted(names.items()):
                target = renamedName(name, old, new)
                if target is not None:
                    txn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (target, mailboxId))
                    moved[mailboxId] = target
                    txn.notify(mailboxId)
            return moved, []

        moved, changed = yield self._run(rename, write=True)
        self.store._renamed(moved)
        for mailboxId, state in changed:
            mailbox = self.store._mailboxes.get(mailboxId)
            if mailbox is not None:
                mailbox._changed(state)

    @defer.inlineCallbacks
    def subscribe(self, name: str) -> Generator["defer.Deferred[Any]", Any, None]:
        name = validateMailboxName(name)

        def add(txn: Transaction) -> None:
            self._check(txn)
            txn.execute(
                "INSERT INTO subscriptions (account_id, name) VALUES (?, ?) ON CONFLICT (account_id, name) DO NOTHING",
                (self.accountId, name),
            )

        yield self._run(add, write=True)

    @defer.inlineCallbacks
    def unsubscribe(self, name: str) -> Generator["defer.Deferred[Any]", Any, None]:
        name = validateMailboxName(name)

        def remove(txn: Transaction) -> None:
            txn.execute("DELETE FROM subscriptions WHERE account_id = ? AND name = ?", (self.accountId, name))
            if txn.rowcount == 0:
                raise NoSuchMailbox(f"Not subscribed to {name}")

        yield self._run(remove, write=True)

    def listSubscriptions(self) -> defer.Deferred:
        def read(txn: Transaction) -> List[str]:
            rows = txn.execute("SELECT name FROM subscriptions WHERE account_id = ?", (self.accountId,)).fetchall()
            return sorted(r[0] for r in rows)

        return self._run(read)

    def _aclMailbox(self, txn: Transaction, name: str) -> int:
        row = txn.execute(
            "SELECT id FROM mailboxes WHERE account_id = ? AND name = ? AND noselect = 0", (self.accountId, name)
        ).fetchone()
        if row is None:
            raise NoSuchMailbox(f"Mailbox {name} does not exist")
        return int(row[0])

    @defer.inlineCallbacks
    def getACL(self, name: str) -> Generator["defer.Deferred[Any]", Any, Dict[str, str]]:
        """
        See L{IAccountACL.getACL}.
        """
        name = validateMailboxName(name)

        def read(txn: Transaction) -> Dict[str, str]:
            mailboxId = self._aclMailbox(txn, name)
            rows = txn.execute("SELECT identifier, rights FROM mailbox_acl WHERE mailbox_id = ?", (mailboxId,)).fetchall()
            return {r[0]: r[1] for r in rows}

        acl = yield self._run(read)
        return acl

    @defer.inlineCallbacks
    def setACL(self, name: str, identifier: str, rights: Optional[str]) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        See L{IAccountACL.setACL}.
        """
        name = validateMailboxName(name)
        checkACLIdentifier(name, identifier, self.address)
        rights = canonicalACLRights(name, rights)

        def change(txn: Transaction) -> None:
            mailboxId = self._aclMailbox(txn, name)
            if rights:
                txn.execute(
                    "INSERT INTO mailbox_acl (mailbox_id, identifier, rights) VALUES (?, ?, ?)"
                    " ON CONFLICT (mailbox_id, identifier) DO UPDATE SET rights = excluded.rights",
                    (mailboxId, identifier, rights),
                )
            else:
                txn.execute("DELETE FROM mailbox_acl WHERE mailbox_id = ? AND identifier = ?", (mailboxId, identifier))

        yield self._run(change, write=True)


@implementer(IStore, IStoreACL)
class SQLStore:
    """
    Accounts and mail in a SQL database.

    @ivar clock: the L{IReactorTime} the change polls of a SQLite database
        run on (tests put a L{task.Clock} here).
    @ivar pollInterval: seconds between two looks at a mailbox with
        listeners, when the database cannot push changes.
    """

    pollInterval = 2.0

    def __init__(self, database: Database, clock: Any = None) -> None:
        """
        @param database: an open L{Database} (its migrations applied).
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self._db = database
        self._mailboxes: "weakref.WeakValueDictionary[int, SQLMailbox]" = weakref.WeakValueDictionary()
        self._polling: Set[SQLMailbox] = set()
        self._locks: Dict[int, Callable[[], None]] = {}
        self._closed = False
        database.startListening(self._remoteChange)

    @classmethod
    def sqlite(cls, path: str, clock: Any = None) -> "SQLStore":
        """
        A store in the SQLite database file at C{path} (made if missing).

        @raise mailplat.errors.StoreError: it cannot be opened or is newer
            than this code.
        """
        from mailplat.store.sql.database import SQLiteDatabase

        return cls(SQLiteDatabase(path), clock)

    @classmethod
    def postgresql(cls, dsn: str, schema: Optional[str] = None, poolSize: int = 8, clock: Any = None) -> "SQLStore":
        """
        A store in a PostgreSQL database (in C{schema} if given, made if
        missing).

        @param dsn: a libpq connection string or C{postgresql://} URL.
        @raise mailplat.errors.StoreError: unreachable (host and port
            named) or newer than this code.
        """
        from mailplat.store.sql.database import PostgresDatabase

        return cls(PostgresDatabase(dsn, schema, poolSize), clock)

    @property
    def database(self) -> Database:
        """
        The L{Database} the store works on.
        """
        return self._db

    def __repr__(self) -> str:
        return f"<SQLStore {self._db.description}>"

    # mailbox objects

    def _mailbox(self, accountId: int, mailboxId: int, name: str, uidValidity: int, state: State) -> SQLMailbox:
        mailbox = self._mailboxes.get(mailboxId)
        if mailbox is None:
            mailbox = SQLMailbox(self, accountId, mailboxId, name, uidValidity, state)
            self._mailboxes[mailboxId] = mailbox
        else:
            mailbox.name = name
            mailbox.uidValidity = uidValidity
            mailbox._observed(state)
        return mailbox

    def _gone(self, mailboxId: int) -> None:
        mailbox = self._mailboxes.pop(mailboxId, None)
        if mailbox is not None:
            mailbox._observed(None)
        forget = getattr(self._db, "forgetLock", None)
        if forget is not None and mailboxId not in self._locks:
            forget(mailboxId)

    def _renamed(self, moved: Dict[int, str]) -> None:
        for mailboxId, name in moved.items():
            mailbox = self._mailboxes.get(mailboxId)
            if mailbox is not None:
                mailbox.name = name
                mailbox._listeners.notify(mailbox)

    def _remoteChange(self, mailboxId: int) -> None:
        """
        Another store changed mailbox C{mailboxId} (PostgreSQL NOTIFY).
        """
        mailbox = self._mailboxes.get(mailboxId)
        if mailbox is not None and mailbox.hasListeners() and not self._closed:
            mailbox.checkForChanges()

    # exclusive locks

    @defer.inlineCallbacks
    def _lock(self, mailbox: SQLMailbox) -> Generator["defer.Deferred[Any]", Any, Callable[[], None]]:
        mailboxId = mailbox.mailboxId
        key = (self._db.description, mailboxId)
        pending = _releasing.get(key)
        if pending is not None:
            # A session of this process is still letting go of it.
            yield pending
        if mailboxId in self._locks:
            raise MailboxLocked("Mailbox is locked by another session")
        self._locks[mailboxId] = lambda: None
        try:
            release = yield self._db.tryLock(mailboxId)
        except BaseException:
            del self._locks[mailboxId]
            raise
        if release is None:
            del self._locks[mailboxId]
            raise MailboxLocked("Mailbox is locked by another session")
        self._locks[mailboxId] = release
        released: List[bool] = []

        def unlock() -> None:
            if released:
                return
            released.append(True)
            self._locks.pop(mailboxId, None)
            d = self._db.runBlocking(release)
            _releasing[key] = d

            def done(result: Any) -> Any:
                if _releasing.get(key) is d:
                    del _releasing[key]
                return result

            d.addBoth(done)
            d.addErrback(lambda f: log.failure("releasing the lock of {mailbox!r} failed", f, mailbox=mailbox))

        return unlock

    # IStore

    def _accountRow(self, txn: Transaction, address: str) -> Optional[int]:
        row = txn.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
        return None if row is None else int(row[0])

    @defer.inlineCallbacks
    def getAccount(self, address: str, create: bool = False) -> Generator["defer.Deferred[Any]", Any, IAccount]:
        def find(txn: Transaction) -> Optional[int]:
            accountId = self._accountRow(txn, address)
            if accountId is not None or not create:
                return accountId
            row = txn.execute(
                "INSERT INTO accounts (address) VALUES (?) ON CONFLICT (address) DO NOTHING RETURNING id", (address,)
            ).fetchone()
            if row is None:
                return self._accountRow(txn, address)
            accountId = int(row[0])
            _createRow(txn, accountId, "INBOX")
            txn.execute("INSERT INTO subscriptions (account_id, name) VALUES (?, ?)", (accountId, "INBOX"))
            for name, use in DEFAULT_MAILBOXES:
                _createRow(txn, accountId, name, use)
                txn.execute("INSERT INTO subscriptions (account_id, name) VALUES (?, ?)", (accountId, name))
            return accountId

        accountId = yield self._db.run(find, write=create)
        if accountId is None:
            raise NoSuchAccount(f"No account {address}")
        return SQLAccount(self, accountId, address)

    def hasAccount(self, address: str) -> defer.Deferred:
        return self._db.run(self._accountRow, address).addCallback(lambda accountId: accountId is not None)

    def listAccounts(self) -> defer.Deferred:
        def read(txn: Transaction) -> List[str]:
            return sorted(r[0] for r in txn.execute("SELECT address FROM accounts").fetchall())

        return self._db.run(read)

    def hasDomain(self, domain: str) -> defer.Deferred:
        """
        Whether an account of C{domain} exists: one query that stops at
        the first match.
        """

        def read(txn: Transaction) -> bool:
            pattern = "%@" + domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            row = txn.execute("SELECT 1 FROM accounts WHERE address LIKE ? ESCAPE '\\' LIMIT 1", (pattern,)).fetchone()
            return row is not None

        return self._db.run(read)

    def sharedWith(self, identifier: str) -> defer.Deferred:
        """
        What other accounts share with C{identifier} or C{anyone} (see
        L{IStoreACL.sharedWith}): one query on the identifier's index.
        """

        def read(txn: Transaction) -> List[Tuple[str, str, str]]:
            rows = txn.execute(
                "SELECT a.address, m.name, l.identifier, l.rights FROM mailbox_acl l"
                " JOIN mailboxes m ON m.id = l.mailbox_id JOIN accounts a ON a.id = m.account_id"
                " WHERE l.identifier IN (?, ?) AND m.noselect = 0 AND a.address <> ?",
                (identifier, ANYONE, identifier),
            ).fetchall()
            byOwner: Dict[str, Dict[str, Dict[str, str]]] = {}
            for owner, name, who, rights in rows:
                byOwner.setdefault(owner, {}).setdefault(name, {})[who] = rights
            out: List[Tuple[str, str, str]] = []
            for owner in sorted(byOwner):
                out.extend(sharedEntries(owner, byOwner[owner], identifier))
            return out

        return self._db.run(read)

    @defer.inlineCallbacks
    def deleteAccount(self, address: str) -> Generator["defer.Deferred[Any]", Any, None]:
        def delete(txn: Transaction) -> List[int]:
            accountId = self._accountRow(txn, address)
            if accountId is None:
                raise NoSuchAccount(f"No account {address}")
            ids = sorted(mailboxId for mailboxId, _ in _names(txn, accountId).values())
            for mailboxId in ids:
                _emptyMailbox(txn, mailboxId)
                txn.notify(mailboxId)
            txn.execute(
                "DELETE FROM mailbox_acl WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = ?)", (accountId,)
            )
            txn.execute("DELETE FROM mailboxes WHERE account_id = ?", (accountId,))
            txn.execute("DELETE FROM subscriptions WHERE account_id = ?", (accountId,))
            txn.execute("DELETE FROM accounts WHERE id = ?", (accountId,))
            return ids

        for mailboxId in (yield self._db.run(delete, write=True)):
            self._gone(mailboxId)

    # users for the SQL checker

    def setUserPassword(self, address: str, password: str) -> defer.Deferred:
        """
        Add a user of the SQL checker, or change their password; the
        argon2id hash is computed off the reactor thread.

        @param address: the login address (normalised here).
        """
        from mailplat.address import normalizeAddress
        from mailplat.auth.passwd import _hasher

        address = normalizeAddress(address)

        def store(hashed: str) -> defer.Deferred:
            def write(txn: Transaction) -> None:
                txn.execute(
                    "INSERT INTO users (address, password_hash) VALUES (?, ?)"
                    " ON CONFLICT (address) DO UPDATE SET password_hash = excluded.password_hash",
                    (address, hashed),
                )

            return self._db.run(write, write=True)

        return self._db.runBlocking(_hasher.hash, password).addCallback(store)

    def deleteUser(self, address: str) -> defer.Deferred:
        """
        Remove a user of the SQL checker; fires with whether they existed.
        """
        from mailplat.address import normalizeAddress

        address = normalizeAddress(address)

        def delete(txn: Transaction) -> bool:
            txn.execute("DELETE FROM users WHERE address = ?", (address,))
            return txn.rowcount > 0

        return self._db.run(delete, write=True)

    @defer.inlineCallbacks
    def close(self):
        if self._closed:
            return None
        self._closed = True
        for mailbox in list(self._polling):
            mailbox._stopPolling()
        yield self._db.close()
        return None
