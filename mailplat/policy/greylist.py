"""
Greylisting: refuse the first attempt of an unknown (client network,
sender, recipient) triplet with C{451 4.7.1}; a real MTA retries, and
after C{delay} seconds the triplet is accepted from then on.

The client network is the IPv4 /24 (or IPv6 /64), so senders with a pool
of outbound hosts are not delayed at every retry.  The state is an SQLite
file (C{<dataDir>/greylist.sqlite}, in WAL mode) that every worker process
reads and writes, so a retry is recognised whichever process takes it;
entries not retried within C{retryWindow} or not seen for C{lifetime} are
forgotten.  The state is soft: a lost or damaged file only greylists
again (a damaged one is set aside and made anew), and an error reading or
writing it lets the mail through, logged.  A C{greylist.json} left by an
older version is taken in once and removed.

With the store on PostgreSQL (several nodes serving one domain), the
triplets live in that database instead, in a table C{greylist} of the
store's schema (made at first use), read and written off the reactor
thread: a retry is recognised whichever node takes it.

Mail from authenticated sessions is never greylisted, nor mail injected
from loopback while that is trusted (C{[policy] trust_loopback}, as
Postfix's C{permit_mynetworks} comes before a greylisting service).

Each recipient is judged at C{RCPT} (as a Postfix policy service such as
postgrey does), so a first attempt is refused before its message is sent,
and only the recipients whose triplets are new wait; the end of C{DATA}
checks the message's recipients again (for mail that came without that
step), which changes nothing once they passed.
"""

import ipaddress
import json
import os
import sqlite3
from typing import Any, BinaryIO, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailplat import netutil
from mailplat.delivery.policy import IPolicy, IRecipientPolicy, Verdict, clientAddress, isAuthenticated
from mailplat.statefile import openStateFile

_log = Logger()

_SCHEMA = ("CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY,"
           " first DOUBLE PRECISION NOT NULL, last DOUBLE PRECISION NOT NULL, passed INTEGER NOT NULL)")


def network(ip: str) -> str:
    """
    The greylisting network of an address: its /24 or /64.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@implementer(IPolicy, IRecipientPolicy)
class GreylistPolicy:
    """
    Greylisting with its state in an SQLite file.

    @ivar path: the state file.
    @ivar clock: an L{IReactorTime} (a L{task.Clock} in tests).
    @ivar delay: seconds before a retry is accepted.
    @ivar retryWindow: seconds a first attempt waits for its retry.
    @ivar lifetime: seconds an accepted triplet stays known without mail.
    @ivar trustLoopback: whether mail from loopback goes unchecked.
    @ivar database: the store's PostgreSQL database
        (L{mailplat.store.sql.database.Database}) holding the state, or
        L{None} for the file at C{path}.
    """

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        delay: float = 300.0,
        retryWindow: float = 4 * 3600.0,
        lifetime: float = 36 * 86400.0,
        trustLoopback: bool = True,
        database: Any = None,
    ) -> None:
        self.path = path
        self.database = database
        self._table = "triplets" if database is None else "greylist"
        self._tables: Any = None
        if database is not None:
            from mailplat.store.sql.database import TablesOnFirstUse

            self._tables = TablesOnFirstUse(database, [_SCHEMA.format(table=self._table)])
        self.trustLoopback = trustLoopback
        self.clock = clock
        self.delay = delay
        self.retryWindow = retryWindow
        self.lifetime = lifetime
        self._db: Optional[sqlite3.Connection] = None
        # When stale entries were last forgotten (by this process).
        self._expired = float("-inf")

    def _open(self) -> sqlite3.Connection:
        """
        The state database, opened (and made, taking in an older
        version's JSON file) at first use; a damaged file is set aside.
        """
        if self._db is not None:
            return self._db
        try:
            db = self._connect()
        except sqlite3.OperationalError:
            # Busy or unreadable for now (another process's write, a
            # permission): not a damaged file.
            raise
        except sqlite3.DatabaseError as e:
            aside = self.path + ".damaged"
            _log.warn("greylist state {path} unreadable ({error}), set aside as {aside}; starting afresh",
                      path=self.path, error=str(e), aside=aside)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            db = self._connect()
        self._db = db
        self._takeInJSON(db)
        return db

    def _connect(self) -> sqlite3.Connection:
        # Soft state: a crash may lose the last changes (a sender is
        # greylisted once more), never the file.
        return openStateFile(self.path, [_SCHEMA.format(table=self._table)], "NORMAL", timeout=2.0)

    def _takeInJSON(self, db: sqlite3.Connection) -> None:
        """
        Take in the C{greylist.json} of an older version beside the file,
        then remove it.
        """
        old = os.path.join(os.path.dirname(self.path), "greylist.json")
        try:
            with open(old, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            _log.warn("old greylist state {path} unreadable, not taken in: {error}", path=old, error=str(e))
            return
        rows = []
        if isinstance(data, dict):
            for key, entry in data.items():
                try:
                    rows.append((str(key), float(entry["first"]), float(entry.get("last", entry["first"])),
                                 1 if entry.get("passed") else 0))
                except (TypeError, KeyError, ValueError, AttributeError):
                    continue
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO triplets VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        os.unlink(old)
        _log.info("took in {count} greylist entries from {path}", count=len(rows), path=old)

    def close(self) -> None:
        """
        Close the state file (it is opened again when needed).
        """
        if self._db is not None:
            self._db.close()
            self._db = None

    def _judge(self, db: Any, ip: str, sender: Optional[str], recipients: List[str], now: float,
               expire: bool) -> float:
        """
        Record the triplets of C{recipients} and return how many seconds
        the longest waiting one has still to wait (0: all pass).

        @param db: the state file's connection, or a
            L{mailplat.store.sql.database.Transaction} (both take C{?}
            markers and answer C{execute(...).fetchone()}).
        @param expire: forget stale entries first.
        """
        table = self._table
        if expire:
            db.execute(f"DELETE FROM {table} WHERE (passed = 1 AND ? - last > ?) OR (passed = 0 AND ? - first > ?)",
                       (now, self.lifetime, now, self.retryWindow))
        wait = 0.0
        for recipient in recipients:
            key = self.key(ip, sender, recipient)
            row = db.execute(f"SELECT first, last, passed FROM {table} WHERE key = ?", (key,)).fetchone()
            if row is None:
                # (Another process may have made it meanwhile: its first
                # attempt is as good as this one.)
                db.execute(f"INSERT INTO {table} VALUES (?, ?, ?, 0) ON CONFLICT (key) DO NOTHING", (key, now, now))
                wait = max(wait, self.delay)
                continue
            first, last, passed = row
            if passed or now - first >= self.delay:
                # Refresh a known triplet at most hourly, not a write per message.
                if not passed or now - last > 3600:
                    db.execute(f"UPDATE {table} SET passed = 1, last = ? WHERE key = ?", (now, key))
            else:
                wait = max(wait, self.delay - (now - first))
        return wait

    def _expiring(self, now: float) -> bool:
        """
        Whether stale entries are to be forgotten now: at most once an hour
        per process.
        """
        if now - self._expired < 3600:
            return False
        self._expired = now
        return True

    def _judgeInDatabase(self, ip: str, sender: Optional[str], recipients: List[str],
                         now: float) -> "defer.Deferred[float]":
        """
        L{_judge} in the store's database, its table made at first use.
        """
        assert self._tables is not None
        return self._tables.run(self._judge, ip, sender, recipients, now, self._expiring(now))

    def key(self, ip: str, sender: Optional[str], recipient: str) -> str:
        """
        The state key of a triplet.
        """
        return f"{network(ip)} {(sender or '').lower()} {recipient.lower()}"

    def checkRecipient(self, session: object, sender: Optional[str], recipient: str) -> "defer.Deferred[Verdict]":
        """
        See L{IRecipientPolicy.checkRecipient}: C{451 4.7.1} while the
        recipient's triplet is new or too young.
        """
        return self.checkMessage(session, sender, [recipient], None)

    def checkMessage(self, session: object, sender: Optional[str], recipients: List[str],
                     message: Optional[BinaryIO]) -> "defer.Deferred[Verdict]":
        """
        See L{IPolicy.checkMessage}: C{451 4.7.1} while any recipient's
        triplet is new or too young.
        """
        ip = clientAddress(session)
        if isAuthenticated(session) or not ip or (
                self.trustLoopback and netutil.isLoopback(getattr(session, "peer", None))):
            return defer.succeed(Verdict.accept())
        now = self.clock.seconds()
        if self.database is not None:
            d = self._judgeInDatabase(ip, sender, recipients, now)

            def unusable(failure: Any) -> float:
                _log.warn("greylist state in {database} not usable, mail let through: {error}",
                          database=self.database.description, error=failure.getErrorMessage())
                return 0.0

            return d.addErrback(unusable).addCallback(self._verdict)
        try:
            wait = self._judge(self._open(), ip, sender, recipients, now, self._expiring(now))
        except (sqlite3.Error, OSError) as e:
            _log.warn("greylist state {path} not usable, mail let through: {error}", path=self.path, error=str(e))
            self.close()
            wait = 0.0
        return defer.succeed(self._verdict(wait))

    @staticmethod
    def _verdict(wait: float) -> Verdict:
        """
        C{451 4.7.1} while C{wait} seconds are left, else accept.
        """
        if wait > 0:
            return Verdict.reject(451, "4.7.1", f"Greylisted, please try again in {int(wait + 0.999)} seconds")
        return Verdict.accept()
