"""
The durable outbound queue: messages waiting to be relayed to other hosts.

Layout of the queue directory (C{<dataDir>/queue/}):

    <id>.msg     the message, wire form (CRLF lines), as received
    <id>.json    its metadata: envelope, and one state per recipient
    tmp/         files being written; anything left there after a crash
                 is garbage and is removed at start
    lock         taken (C{flock}) around every metadata change, so that
                 the admin command and the server never overwrite each
                 other's change
    generation   a counter raised after every rewrite of an existing
                 entry's metadata (a hint, never fsynced; see below)

Durability rules (DESIGN.md: nothing is acknowledged before C{fsync}):

 - L{Queue.enqueue} writes and fsyncs the message file, then the metadata
   file, each through C{tmp/} and C{rename}, then fsyncs the directory;
   its Deferred fires only after that, so the SMTP C{250} comes after.  The
   metadata file is the commit point: a C{.msg} without its C{.json} is an
   enqueue that never finished (never acknowledged) and is removed at start.
 - Every state change rewrites the metadata file as a whole (temporary
   file, fsync, rename, directory fsync): after a crash a recipient is
   either in its old state or its new one, never in between.

A pass of the runner (L{Queue.due}) must not cost a read of every entry:
the queue is kept in memory and brought in line with the directory by
listing it, reading only the entries that are new.  An existing entry
changed by another process (the admin command's hold, release, flush)
raises the C{generation} counter, and a process that sees a value it
neither wrote nor saw before looks at every entry's file again; a lost or
garbled counter only costs such a look.  The server's runner reads the
counter every few seconds (L{Queue.changedElsewhere}), so a release or a
flush by the admin command is acted on at once, not at the next poll.

Delivery is at-least-once: the relay marks a recipient delivered right
after the remote server's C{250} to the end of data (one metadata write, a
few milliseconds).  A crash inside that window makes the recipient be sent
again on the next start; no other crash can.

The blocking file work is kept in the private methods C{_writeFile},
C{_readMeta}, C{_writeMeta}, C{_removeFiles} and C{_scan}.  Every change
(enqueue, the marks, hold, release, flush, delete: file writes, fsyncs and
the lock) runs through the queue's C{run}: in a server, the reactor's
thread pool (L{Queue.inThreads}), so an fsync or an admin command holding
the lock never stalls the sessions; by default at once, on the calling
thread (the admin command, tests).  The in-memory copies of the entries are
guarded by a lock, as reads (L{Queue.get}, L{Queue.list},
L{Queue.nextWakeup}) stay on the calling thread.
"""

import errno
import fcntl
import functools
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Callable, Collection, Dict, Iterable, List, Mapping, Optional, Set

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
DEFERRED = "deferred"

#: States in which a recipient still waits for a delivery attempt.
ACTIVE_STATES = frozenset([PENDING, DEFERRED])

_ID = re.compile(r"^[0-9a-f]{8,40}$")
_CHUNK = 65536


class NoSuchEntry(KeyError):
    """
    No queue entry has that id (or the id is not a valid queue id).
    """


@dataclass
class RecipientStatus:
    """
    The state of one recipient of a queue entry.

    @ivar address: the forward path (normalised).
    @ivar state: C{pending}, C{delivered}, C{failed} or C{deferred}.
    @ivar reply: the last reply concerning this recipient, as text
        (C{"550 5.1.1 User unknown"}), or L{None} before any attempt.
    @ivar attempts: how many delivery attempts were made.
    @ivar nextAttempt: POSIX time of the next attempt (for C{pending} and
        C{deferred}).
    @ivar lastAttempt: POSIX time of the last attempt, or L{None}.
    @ivar remoteMTA: the host that gave C{reply}, or L{None}.
    @ivar delayWarned: a delay warning DSN was sent for this recipient.
    @ivar notified: the final DSN (bounce) for this recipient was queued.
    @ivar orcpt: the original recipient (DSN C{ORCPT}, RFC 3461), or L{None}.
    @ivar notify: the DSN C{NOTIFY} list (RFC 3461: C{NEVER}, or some of
        C{SUCCESS}, C{FAILURE}, C{DELAY}), or L{None} for the default
        (failure and delay).
    """

    address: str
    state: str = PENDING
    reply: Optional[str] = None
    attempts: int = 0
    nextAttempt: float = 0.0
    lastAttempt: Optional[float] = None
    remoteMTA: Optional[str] = None
    delayWarned: bool = False
    notified: bool = False
    orcpt: Optional[str] = None
    notify: Optional[List[str]] = None

    def wants(self, kind: str) -> bool:
        """
        Whether a DSN of C{kind} (C{"FAILURE"}, C{"DELAY"}, C{"SUCCESS"})
        is wanted for this recipient (RFC 3461 4.1; by default failures and
        delays are reported).
        """
        if self.notify is None:
            return kind in ("FAILURE", "DELAY")
        return kind in self.notify


@dataclass
class QueueEntry:
    """
    One queued message: its envelope and the state of each recipient.

    @ivar id: the queue id (lower-case hex).
    @ivar sender: the reverse path, or L{None} for the null sender C{<>}
        (a bounce: never bounced itself).
    @ivar created: POSIX time the entry was queued.
    @ivar held: an administrator put the entry on hold: no delivery.
    @ivar envid: the DSN envelope id (RFC 3461 C{ENVID}), or L{None}.
    @ivar ret: the DSN C{RET} parameter (C{"FULL"} or C{"HDRS"}), or L{None}.
    @ivar recipients: the L{RecipientStatus} of each recipient.
    @ivar smtputf8: the message was received with C{SMTPUTF8} (RFC 6531):
        it may only be relayed to a next hop that offers SMTPUTF8.
    """

    id: str
    sender: Optional[str]
    created: float
    recipients: List[RecipientStatus]
    held: bool = False
    envid: Optional[str] = None
    ret: Optional[str] = None
    smtputf8: bool = False

    def active(self) -> List[RecipientStatus]:
        """
        The recipients still waiting for delivery.
        """
        return [r for r in self.recipients if r.state in ACTIVE_STATES]

    def makeDue(self, now: float, release: bool = False) -> None:
        """
        Make every waiting recipient due by C{now} (the admin's flush);
        with C{release}, take the entry off hold too.
        """
        if release:
            self.held = False
        for r in self.active():
            r.nextAttempt = min(r.nextAttempt, now)

    def recipient(self, address: str) -> RecipientStatus:
        """
        The status of C{address}.

        @raise KeyError: not a recipient of this entry.
        """
        for r in self.recipients:
            if r.address == address:
                return r
        raise KeyError(address)

    def isFinished(self) -> bool:
        """
        Whether no recipient waits any more and every failure was reported.
        """
        return not self.active() and all(r.notified or r.state != FAILED for r in self.recipients)

    def toJSON(self) -> Dict:
        """
        The metadata record as stored.
        """
        data = asdict(self)
        data["version"] = 1
        return data

    @classmethod
    def fromJSON(cls, data: Dict) -> "QueueEntry":
        """
        Rebuild an entry from its stored record.
        """
        recipients = [RecipientStatus(**r) for r in data["recipients"]]
        return cls(
            id=data["id"],
            sender=data["sender"],
            created=data["created"],
            recipients=recipients,
            held=data.get("held", False),
            envid=data.get("envid"),
            ret=data.get("ret"),
            smtputf8=data.get("smtputf8", False),
        )


def _copyList(value: Optional[List[str]]) -> Optional[List[str]]:
    return list(value) if value is not None else None


def _fsyncDirectory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recordAttempt(
    entry: "QueueEntry",
    addresses: Set[str],
    state: str,
    reply: str,
    remoteMTA: Optional[str],
    nextAttempt: Optional[float],
    now: float,
) -> None:
    """
    Record a delivery attempt's outcome for the recipients C{addresses} of
    C{entry}, in place; every queue keeps its entries' states by this rule.
    A recipient already in a final state is never moved out of it: a
    delivered recipient is never sent again, a failed one never retried.
    """
    for r in entry.recipients:
        if r.address not in addresses or r.state not in ACTIVE_STATES:
            continue
        r.state = state
        r.reply = reply
        r.attempts += 1
        r.lastAttempt = now
        r.remoteMTA = remoteMTA
        if nextAttempt is not None:
            r.nextAttempt = nextAttempt


class Queue:
    """
    The outbound queue in one directory (see the module docstring).

    Every method that changes an entry returns a L{Deferred} that fires once
    the change is durable.  Entries are read from disk again when their
    metadata file changed, so changes made by the admin command (hold,
    delete, flush) are seen by a running server.

    @ivar path: the queue directory.
    @ivar clock: an L{IReactorTime} giving the time.
    """

    _log = Logger()

    def __init__(self, path: str, clock: IReactorTime,
                 run: Optional[Callable[..., "defer.Deferred[Any]"]] = None) -> None:
        """
        @param run: calls C{f(*args)} and returns a Deferred of its result:
            where the changes are made (see L{inThreads}); by default at
            once, on the calling thread.
        """
        self.path = path
        self.clock = clock
        self._run = run if run is not None else defer.maybeDeferred
        self._tmp = os.path.join(path, "tmp")
        os.makedirs(self._tmp, exist_ok=True)
        # Guards _cache and _stamps, changed by the thread making a change
        # and read by the caller's.
        self._mutex = threading.RLock()
        self._cache: Dict[str, QueueEntry] = {}
        self._stamps: Dict[str, tuple] = {}
        # The generation (see the module docstring) this cache is current
        # with; None before the first scan.
        self._generation: Optional[int] = None
        self._observers: List[Callable[[], None]] = []
        self._scan()

    @classmethod
    def inThreads(cls, path: str, reactor: Any) -> "Queue":
        """
        The queue of a server: its changes made in C{reactor}'s thread
        pool, off the reactor thread.
        """
        return cls(path, reactor, functools.partial(threads.deferToThreadPool, reactor, reactor.getThreadPool()))

    # Observers.

    def addObserver(self, observer: Callable[[], None]) -> None:
        """
        Call C{observer()} whenever new work may be due (an enqueue, a
        flush, a release), so a L{mailplat.relay.runner.QueueRunner} wakes.
        """
        self._observers.append(observer)

    def removeObserver(self, observer: Callable[[], None]) -> None:
        """
        Stop calling C{observer}; unknown observers are ignored.
        """
        if observer in self._observers:
            self._observers.remove(observer)

    def _notify(self) -> None:
        for observer in list(self._observers):
            try:
                observer()
            except Exception:
                self._log.failure("queue observer failed")

    # Public API.

    def enqueue(
        self,
        sender: Optional[str],
        recipients: Iterable[str],
        messageFile: BinaryIO,
        envid: Optional[str] = None,
        ret: Optional[str] = None,
        parameters: Optional[Mapping[str, Any]] = None,
        smtputf8: bool = False,
    ) -> "defer.Deferred[str]":
        """
        Queue a message for C{recipients} (each once, in order).

        @param messageFile: a binary file holding the wire form; read from
            offset 0 (from where it stands when it cannot seek) to its end,
            not closed.
        @param envid: the DSN envelope id (RFC 3461 C{ENVID}, decoded).
        @param ret: the DSN C{RET} value, C{"FULL"} or C{"HDRS"}.
        @param parameters: recipient address to an object with C{notify}
            and C{orcpt} attributes (a
            L{mailplat.smtp.envelope.RecipientParameters}); recipients not
            in it get the defaults.
        @param smtputf8: the message needs a next hop with SMTPUTF8.
        @return: a Deferred firing with the new queue id once the entry is
            durable.
        """
        params = dict(parameters or {})
        addresses: List[str] = []
        for r in recipients:
            if r not in addresses:
                addresses.append(r)
        if not addresses:
            return defer.fail(ValueError("a queue entry needs at least one recipient"))
        now = self.clock.seconds()
        entryId = f"{int(now):010x}{secrets.token_hex(6)}"
        entry = QueueEntry(
            id=entryId,
            sender=sender,
            created=now,
            recipients=[
                RecipientStatus(
                    address=a,
                    nextAttempt=now,
                    notify=_copyList(getattr(params.get(a), "notify", None)) if params else None,
                    orcpt=getattr(params.get(a), "orcpt", None) if params else None,
                )
                for a in addresses
            ],
            envid=envid,
            ret=ret,
            smtputf8=smtputf8,
        )
        def write() -> str:
            try:
                self._writeFile(entryId + ".msg", messageFile)
                with self._locked():
                    self._writeMeta(entry)
            except BaseException:
                self._removeFiles(entryId)
                raise
            return entryId

        return self._run(write).addCallback(self._notified)

    def _notified(self, result: Any) -> Any:
        self._notify()
        return result

    def get(self, entryId: str) -> QueueEntry:
        """
        The current state of an entry (a copy: change it through the
        methods of this class).

        @raise NoSuchEntry: no such entry.
        """
        self._checkId(entryId)
        entry = self._fresh(entryId)
        if entry is None:
            raise NoSuchEntry(entryId)
        return QueueEntry.fromJSON(entry.toJSON())

    def list(self) -> List[QueueEntry]:
        """
        Every entry, oldest first.
        """
        with self._mutex:
            self._scan()
            return [QueueEntry.fromJSON(self._cache[i].toJSON()) for i in sorted(self._cache, key=self._order)]

    def due(self, now: Optional[float] = None) -> List[QueueEntry]:
        """
        The entries, oldest first, that are not held and have at least one
        recipient whose next attempt time has come.
        """
        if now is None:
            now = self.clock.seconds()
        with self._mutex:
            self._scan()
            due = [
                entryId for entryId, e in self._cache.items()
                if not e.held and any(r.nextAttempt <= now and r.state in ACTIVE_STATES for r in e.recipients)
            ]
            return [QueueEntry.fromJSON(self._cache[i].toJSON()) for i in sorted(due, key=self._order)]

    @property
    def depth(self) -> int:
        """
        How many entries the queue holds (the metrics page's figure): the
        directory listed again, no entry read twice, nothing copied.
        """
        with self._mutex:
            self._scan()
            return len(self._cache)

    @property
    def oldest(self) -> Optional[float]:
        """
        When the oldest entry was queued (POSIX time), as of the last look
        at the directory; L{None} when the queue is empty.
        """
        with self._mutex:
            return min((e.created for e in self._cache.values()), default=None)

    def nextWakeup(self, exclude: Collection[str] = ()) -> Optional[float]:
        """
        The earliest next attempt time of any active recipient of an entry
        not held, or L{None} when nothing waits.

        @param exclude: ids of entries to leave out (those the runner is
            delivering right now).
        """
        with self._mutex:
            times = [
                r.nextAttempt for i, e in self._cache.items() if not e.held and i not in exclude for r in e.active()
            ]
        return min(times) if times else None

    def openMessage(self, entryId: str) -> BinaryIO:
        """
        Open an entry's message for reading (the caller closes it).

        @raise NoSuchEntry: no such entry.
        """
        self._checkId(entryId)
        try:
            return open(os.path.join(self.path, entryId + ".msg"), "rb")
        except FileNotFoundError:
            raise NoSuchEntry(entryId) from None

    def markDelivered(self, entryId: str, recipients: Iterable[str], reply: str, remoteMTA: Optional[str] = None) -> "defer.Deferred[Optional[QueueEntry]]":
        """
        Record that the recipients were delivered (the remote server
        accepted the message for them).

        @return: a Deferred firing with the updated entry, or L{None} when
            the entry was deleted meanwhile.
        """
        return self._mark(entryId, recipients, DELIVERED, reply, remoteMTA, None)

    def markFailed(self, entryId: str, recipients: Iterable[str], reply: str, remoteMTA: Optional[str] = None) -> "defer.Deferred[Optional[QueueEntry]]":
        """
        Record a permanent failure for the recipients (they are then
        bounced and no longer tried).
        """
        return self._mark(entryId, recipients, FAILED, reply, remoteMTA, None)

    def markDeferred(
        self, entryId: str, recipients: Iterable[str], reply: str, nextAttempt: float, remoteMTA: Optional[str] = None
    ) -> "defer.Deferred[Optional[QueueEntry]]":
        """
        Record a temporary failure for the recipients; they are tried again
        at C{nextAttempt}.
        """
        return self._mark(entryId, recipients, DEFERRED, reply, remoteMTA, nextAttempt)

    def markNotified(self, entryId: str, recipients: Iterable[str], kind: str) -> "defer.Deferred[Optional[QueueEntry]]":
        """
        Record that a DSN of C{kind} (C{"failed"} or C{"delayed"}) was
        queued for the recipients, so it is never sent twice.
        """
        addresses = set(recipients)

        def change(entry: QueueEntry) -> None:
            for r in entry.recipients:
                if r.address in addresses:
                    if kind == "delayed":
                        r.delayWarned = True
                    else:
                        r.notified = True

        return self._run(self._update, entryId, change, True)

    def delete(self, entryId: str) -> "defer.Deferred[None]":
        """
        Remove an entry for good.

        @raise NoSuchEntry: (as a failure) no such entry.
        """
        def remove() -> None:
            self._checkId(entryId)
            with self._locked():
                if not os.path.exists(self._metaPath(entryId)):
                    raise NoSuchEntry(entryId)
                self._removeFiles(entryId)

        return self._run(remove)

    def hold(self, entryId: str) -> "defer.Deferred[QueueEntry]":
        """
        Put an entry on hold: it is not delivered until released.
        """
        return self._set(entryId, lambda e: setattr(e, "held", True), notify=False)

    def release(self, entryId: str) -> "defer.Deferred[QueueEntry]":
        """
        Release a held entry; it is tried at once.
        """
        now = self.clock.seconds()
        return self._set(entryId, lambda entry: entry.makeDue(now, release=True), notify=True)

    def flush(self, entryId: Optional[str] = None) -> "defer.Deferred[List[str]]":
        """
        Make every waiting recipient (of C{entryId}, or of every entry not
        held) due now.

        @return: a Deferred firing with the ids flushed.
        """
        now = self.clock.seconds()

        def change(entry: QueueEntry) -> None:
            entry.makeDue(now)

        def makeDue() -> List[str]:
            if entryId is not None:
                self._checkId(entryId)
                self._update(entryId, change)
                return [entryId]
            ids = [e.id for e in self.list() if not e.held and e.active()]
            for i in ids:
                self._update(i, change, missingOk=True)
            return ids

        return self._run(makeDue).addCallback(self._notified)

    # Private: state changes.

    def _set(self, entryId: str, change: Callable[[QueueEntry], None], notify: bool) -> defer.Deferred:
        def update() -> Optional[QueueEntry]:
            self._checkId(entryId)
            return self._update(entryId, change)

        d = self._run(update)
        return d.addCallback(self._notified) if notify else d

    def _mark(
        self,
        entryId: str,
        recipients: Iterable[str],
        state: str,
        reply: str,
        remoteMTA: Optional[str],
        nextAttempt: Optional[float],
    ) -> defer.Deferred:
        addresses = set(recipients)
        now = self.clock.seconds()

        def change(entry: QueueEntry) -> None:
            recordAttempt(entry, addresses, state, reply, remoteMTA, nextAttempt, now)

        return self._run(self._update, entryId, change, True)

    def _update(self, entryId: str, change: Callable[[QueueEntry], None], missingOk: bool = False) -> Optional[QueueEntry]:
        """
        Read-modify-write one entry's metadata under the queue lock.

        @return: the updated entry (a copy), or L{None} when it does not
            exist and C{missingOk}.
        @raise NoSuchEntry: it does not exist and not C{missingOk}.
        """
        with self._locked():
            entry = self._readMeta(entryId)
            if entry is None:
                self._forget(entryId)
                if missingOk:
                    return None
                raise NoSuchEntry(entryId)
            # A copy: the cached entry may be read meanwhile, and stays
            # as it is on disk until the new one is.
            entry = QueueEntry.fromJSON(entry.toJSON())
            change(entry)
            self._writeMeta(entry)
            self._raiseGeneration()
        return QueueEntry.fromJSON(entry.toJSON())

    def _generationPath(self) -> str:
        return os.path.join(self.path, "generation")

    def _readGeneration(self) -> Optional[int]:
        """
        The generation counter (0 when there is none yet), or L{None} when
        it cannot be read.
        """
        try:
            with open(self._generationPath(), "rb") as f:
                return int(f.read() or b"0")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            return None

    def changedElsewhere(self) -> bool:
        """
        Whether another process (the admin command's hold, release or
        flush) rewrote an entry since this one last looked at every entry:
        one read of the C{generation} file, cheap enough to ask every few
        seconds (L{QueueRunner <mailplat.relay.runner.QueueRunner>} does).
        """
        generation = self._readGeneration()
        with self._mutex:
            # (A garbled counter is left to the next pass, which looks at
            # every entry anyway: not a pass every few seconds.)
            return generation is not None and generation != self._generation

    def _raiseGeneration(self) -> None:
        """
        (Under the queue lock, after rewriting an entry.)  Raise the
        counter; this process stays current with it when it was current
        with the value before (no other process changed an entry since).
        """
        before = self._readGeneration()
        # (After a garbled counter, a value no process can be current with.)
        value = before + 1 if before is not None else time.time_ns()
        fd = os.open(self._generationPath(), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            # Fixed width, written at once: a reader sees one value.
            os.pwrite(fd, b"%020d\n" % (value,), 0)
        finally:
            os.close(fd)
        with self._mutex:
            if before is not None and before == self._generation:
                self._generation = value

    # Private: the blocking file work.

    def _metaPath(self, entryId: str) -> str:
        return os.path.join(self.path, entryId + ".json")

    @staticmethod
    def _checkId(entryId: str) -> None:
        if not isinstance(entryId, str) or not _ID.match(entryId):
            raise NoSuchEntry(entryId)

    def _order(self, entryId: str) -> tuple:
        return (self._cache[entryId].created, entryId)

    def _locked(self) -> "_Lock":
        return _Lock(os.path.join(self.path, "lock"))

    def _writeFile(self, name: str, source: BinaryIO) -> None:
        """
        Copy C{source} into C{name} in the queue directory, durably.
        """
        tmp = os.path.join(self._tmp, name)
        if source.seekable():
            source.seek(0)
        with open(tmp, "wb") as out:
            while True:
                chunk = source.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, os.path.join(self.path, name))

    def _writeMeta(self, entry: QueueEntry) -> None:
        """
        Replace an entry's metadata atomically and durably (temporary file,
        fsync, rename, directory fsync).
        """
        tmp = os.path.join(self._tmp, entry.id + ".json")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(entry.toJSON(), out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, self._metaPath(entry.id))
        _fsyncDirectory(self.path)
        self._remember(entry)

    def _readMeta(self, entryId: str) -> Optional[QueueEntry]:
        """
        Read an entry's metadata from disk, or L{None} when it is gone.
        """
        path = self._metaPath(entryId)
        try:
            with open(path, encoding="utf-8") as f:
                stat = os.fstat(f.fileno())
                entry = QueueEntry.fromJSON(json.load(f))
        except FileNotFoundError:
            return None
        with self._mutex:
            self._cache[entryId] = entry
            self._stamps[entryId] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        return entry

    def _remember(self, entry: QueueEntry) -> None:
        try:
            stat = os.stat(self._metaPath(entry.id))
        except FileNotFoundError:
            self._forget(entry.id)
            return
        with self._mutex:
            self._cache[entry.id] = entry
            self._stamps[entry.id] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _forget(self, entryId: str) -> None:
        with self._mutex:
            self._cache.pop(entryId, None)
            self._stamps.pop(entryId, None)

    def _fresh(self, entryId: str) -> Optional[QueueEntry]:
        """
        The cached entry, read again if its file changed on disk.
        """
        try:
            stat = os.stat(self._metaPath(entryId))
        except FileNotFoundError:
            self._forget(entryId)
            return None
        with self._mutex:
            if self._stamps.get(entryId) == (stat.st_mtime_ns, stat.st_size, stat.st_ino):
                return self._cache.get(entryId)
        try:
            return self._readMeta(entryId)
        except (ValueError, KeyError, TypeError):
            self._log.error("queue: unreadable metadata {path}", path=self._metaPath(entryId))
            self._forget(entryId)
            return None

    def _removeFiles(self, entryId: str) -> None:
        """
        Remove an entry: metadata first (the commit point), then message.
        """
        for name in (entryId + ".json", entryId + ".msg"):
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
        _fsyncDirectory(self.path)
        self._forget(entryId)

    def _scan(self) -> None:
        """
        Bring the cache in line with the directory: read new metadata (and
        changed metadata, looking at every file, when the generation
        counter says another process rewrote an entry), forget removed
        entries, and clean up what a crash left (files in C{tmp/}; message
        files without metadata that are older than a minute, i.e. not being
        written right now by another process).
        """
        generation = self._readGeneration()
        try:
            names = os.listdir(self.path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                names = []
            else:
                raise
        # (Set operations: a big queue costs a listing, not a Python step
        # per entry and per check.)
        jsons = {n[:-5] for n in names if n.endswith(".json")}
        with self._mutex:
            known = set(self._cache)
            everything = generation is None or generation != self._generation
        metas = (jsons & known) | {i for i in jsons - known if _ID.match(i)}
        for entryId in known - metas:
            self._forget(entryId)
        for entryId in metas if everything else metas - known:
            self._fresh(entryId)
        if everything and generation is not None:
            with self._mutex:
                self._generation = generation
        # File ages are wall-clock times, whatever clock the queue runs on.
        now = time.time()
        for entryId in {n[:-4] for n in names if n.endswith(".msg")} - metas:
            if _ID.match(entryId):
                full = os.path.join(self.path, entryId + ".msg")
                try:
                    if os.stat(full).st_mtime < now - 60:
                        os.unlink(full)
                except FileNotFoundError:
                    pass
        for n in os.listdir(self._tmp):
            full = os.path.join(self._tmp, n)
            try:
                if os.stat(full).st_mtime < now - 60:
                    os.unlink(full)
            except FileNotFoundError:
                pass


class _Lock:
    """
    An exclusive C{flock} on the queue's lock file, as a context manager
    (re-entrant within one process is not needed: updates never nest).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: Optional[int] = None

    def __enter__(self) -> "_Lock":
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

