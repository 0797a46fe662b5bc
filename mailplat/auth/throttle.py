"""
Slowing down password guessing: failed logins are counted per account and
per client address over a sliding window.

After L{LoginThrottle.delayAfter} failures in the window, each further
attempt waits before its credentials are checked, twice as long as the one
before (L{LoginThrottle.baseDelay}, doubling, at most
L{LoginThrottle.maxDelay}); the wait comes before the check so that a
client cannot learn the answer early by hanging up.  From
L{LoginThrottle.refuseAfter} failures on, an attempt is refused at once
with L{LoginThrottled} until enough of the failures have aged out of the
window.  A successful login clears the account's failures (not the
address's: one good account must not buy an address more guesses at
others).

An attempt counts as a failure from the moment it starts and is taken back
when it succeeds or the checker breaks, so that many attempts started in
parallel are throttled like the same attempts made one after the other.

The counters live in memory (L{MemoryCounters}), or, in a server, in an
SQLite file of the data directory that every worker process shares
(L{SharedCounters}, C{<data-dir>/login-failures.sqlite}): otherwise each of
N processes would allow N times the guesses.  The file is soft state: an
error with it is logged and the process counts in memory from then on.
With the store on PostgreSQL (several nodes), they live in its table
C{login_failures} instead (L{DatabaseCounters}), counted off the reactor
thread, so that every node counts each failure once; an error there
counts that attempt in this process's memory.

L{ThrottledPortal} is the cred portal that applies a L{LoginThrottle}.  The
client address comes in through C{mind}: protocols call
C{portal.login(credentials, self.transport.getPeer().host, iface)}.  The
realm receives that C{mind} as usual (L{mailplat.auth.realm.MailRealm}
ignores it).
"""

import contextlib
import sqlite3
from collections import OrderedDict, deque
from typing import Any, Deque, Iterator, List, Optional, Tuple

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailplat.address import normalizeAddress
from mailplat.statefile import openStateFile
from mailplat.limits import addressKey
from mailplat.netutil import isLoopback

log = Logger()

_Key = Tuple[str, str]


class LoginThrottled(UnauthorizedLogin):
    """
    A login refused without checking the credentials: too many recent
    failures for this account or from this address.  A subclass of
    L{UnauthorizedLogin} so that a protocol that does not know it treats it
    as a failed login; a protocol that does can answer with a temporary
    refusal instead (SMTP C{454 4.7.0}, POP3 C{-ERR [SYS/TEMP]}, IMAP
    C{NO [UNAVAILABLE]}).

    @ivar retryAfter: seconds until an attempt may be checked again.
    """

    def __init__(self, message: str, retryAfter: float) -> None:
        super().__init__(message)
        self.retryAfter = retryAfter


class Attempt:
    """
    One login attempt under way: what it counts against and how long it
    must wait.

    @ivar keys: the counters it counts against (account, address).
    @ivar stamp: when it started (the clock's time), as recorded in each
        counter.
    @ivar delay: seconds to wait before checking the credentials.
    @ivar counts: for each of C{keys}, the failures counted in the window
        with this attempt, when it began.
    """

    def __init__(self, keys: Tuple[_Key, ...], stamp: float, delay: float, counts: Tuple[int, ...] = ()) -> None:
        self.keys = keys
        self.stamp = stamp
        self.delay = delay
        self.counts = counts
        self.settled = False


class MemoryCounters:
    """
    The failure stamps of each counter, in this process's memory, at most
    C{maxEntries} counters (the least recently used are forgotten, so a
    spray of made-up names cannot exhaust memory) and C{keep} stamps each.
    """

    def __init__(self, keep: int, maxEntries: int = 100_000) -> None:
        self.keep = keep
        self.maxEntries = maxEntries
        self._failures: "OrderedDict[_Key, Deque[float]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """
        Make the calls inside one change (nothing to do in one process).
        """
        yield

    def stamps(self, key: _Key, horizon: float) -> List[float]:
        """
        The stamps of C{key} after C{horizon}, oldest first (older ones are
        dropped).
        """
        times = self._failures.get(key)
        if times is None:
            return []
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return []
        return list(times)

    def add(self, keys: Tuple[_Key, ...], stamp: float) -> None:
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                times = self._failures[key] = deque(maxlen=self.keep)
            else:
                self._failures.move_to_end(key)
            times.append(stamp)
        while len(self._failures) > self.maxEntries:
            self._failures.popitem(last=False)

    def withdraw(self, key: _Key, stamp: float) -> None:
        """
        Take one C{stamp} back from C{key}.
        """
        times = self._failures.get(key)
        if times is None:
            return
        try:
            times.remove(stamp)
        except ValueError:
            return
        if not times:
            del self._failures[key]

    def clear(self, key: _Key) -> None:
        self._failures.pop(key, None)

    def sweep(self, horizon: float) -> None:
        """
        Drop every stamp up to C{horizon}, and counters beyond the bound.
        """
        for key in list(self._failures):
            self.stamps(key, horizon)
        while len(self._failures) > self.maxEntries:
            self._failures.popitem(last=False)


class SharedCounters:
    """
    The failure stamps in an SQLite file (WAL) that the processes of one
    server share, so that they count each failure once between them.  On
    an error with the file the counters go on in this process's memory
    (logged once).
    """

    def __init__(self, path: str, keep: int, maxEntries: int = 100_000) -> None:
        self.path = path
        self._db: Optional[sqlite3.Connection] = None
        self._memory: Optional[MemoryCounters] = None
        self._fallback = MemoryCounters(keep, maxEntries)

    def _connection(self) -> Optional[sqlite3.Connection]:
        if self._memory is not None:
            return None
        if self._db is None:
            # Soft state: a crash may lose the last failures, never the
            # file.  (Each change holds the lock for microseconds; a wait
            # longer than the timeout means something is wrong with it.)
            self._db = openStateFile(self.path, [
                "CREATE TABLE IF NOT EXISTS failures (kind TEXT NOT NULL, name TEXT NOT NULL, stamp REAL NOT NULL)",
                "CREATE INDEX IF NOT EXISTS failures_key ON failures (kind, name, stamp)",
            ], "OFF", timeout=1.0)
        return self._db

    def _failed(self, error: Exception) -> MemoryCounters:
        log.warn("login failure counters {path} not usable ({error}); counting in this process only",
                 path=self.path, error=str(error))
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        self._memory = self._fallback
        return self._memory

    def _do(self, sql: Any, memory: Any) -> Any:
        """
        C{sql(db)}, or C{memory(counters)} once the file failed (for this
        call only when it was busy longer than the timeout).
        """
        if self._memory is None:
            try:
                db = self._connection()
                if db is not None:
                    return sql(db)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    self._failed(e)
                else:
                    log.warn("login failure counters {path} busy ({error}); counted in this process this time",
                             path=self.path, error=str(e))
                    if self._db is not None and self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    return memory(self._fallback)
            except (sqlite3.Error, OSError) as e:
                self._failed(e)
        assert self._memory is not None
        return memory(self._memory)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """
        Make the calls inside one change: no other process counts between
        a count and the failure added after it.
        """
        began = self._do(lambda db: db.execute("BEGIN IMMEDIATE") and True, lambda memory: False)
        try:
            yield
        except BaseException:
            if began:
                self._do(lambda db: db.in_transaction and db.execute("ROLLBACK"), lambda memory: None)
            raise
        if began:
            self._do(lambda db: db.in_transaction and db.execute("COMMIT"), lambda memory: None)

    def stamps(self, key: _Key, horizon: float) -> List[float]:
        return self._do(
            lambda db: [stamp for (stamp,) in db.execute(
                "SELECT stamp FROM failures WHERE kind = ? AND name = ? AND stamp > ? ORDER BY stamp", (*key, horizon))],
            lambda memory: memory.stamps(key, horizon))

    def add(self, keys: Tuple[_Key, ...], stamp: float) -> None:
        self._do(lambda db: db.executemany("INSERT INTO failures VALUES (?, ?, ?)", [(*key, stamp) for key in keys]),
                 lambda memory: memory.add(keys, stamp))

    def withdraw(self, key: _Key, stamp: float) -> None:
        self._do(lambda db: db.execute(
            "DELETE FROM failures WHERE rowid = (SELECT rowid FROM failures WHERE kind = ? AND name = ? AND stamp = ? LIMIT 1)",
            (*key, stamp)), lambda memory: memory.withdraw(key, stamp))

    def clear(self, key: _Key) -> None:
        self._do(lambda db: db.execute("DELETE FROM failures WHERE kind = ? AND name = ?", key),
                 lambda memory: memory.clear(key))

    def sweep(self, horizon: float) -> None:
        self._do(lambda db: db.execute("DELETE FROM failures WHERE stamp <= ?", (horizon,)),
                 lambda memory: memory.sweep(horizon))


_FAILURES_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS login_failures (kind TEXT NOT NULL, name TEXT NOT NULL, stamp DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (kind, name, stamp)",
]


class _TransactionCounters:
    """
    The counters' operations inside one transaction of a PostgreSQL
    L{mailplat.store.sql.database.Database} (see L{DatabaseCounters}).
    """

    def __init__(self, txn: Any, namespace: str) -> None:
        self.txn = txn
        self.namespace = namespace

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """
        Already one transaction: nothing to do.
        """
        yield

    def lock(self, keys: Tuple[_Key, ...]) -> None:
        """
        Hold the counters of C{keys} until the transaction ends, so that no
        other node counts between a count and the failure added after it
        (in one order, so that two attempts cannot wait for each other).
        """
        from mailplat.store.sql.database import _advisoryKey

        for kind, name in sorted(keys):
            self.txn.execute("SELECT pg_advisory_xact_lock(?)", (_advisoryKey(f"{self.namespace} {kind} {name}", 0),))

    def stamps(self, key: _Key, horizon: float) -> List[float]:
        rows = self.txn.execute("SELECT stamp FROM login_failures WHERE kind = ? AND name = ? AND stamp > ?"
                                " ORDER BY stamp", (*key, horizon)).fetchall()
        return [stamp for (stamp,) in rows]

    def add(self, keys: Tuple[_Key, ...], stamp: float) -> None:
        self.txn.executemany("INSERT INTO login_failures VALUES (?, ?, ?)", [(*key, stamp) for key in keys])

    def withdraw(self, key: _Key, stamp: float) -> None:
        self.txn.execute("DELETE FROM login_failures WHERE ctid = (SELECT ctid FROM login_failures"
                         " WHERE kind = ? AND name = ? AND stamp = ? LIMIT 1)", (*key, stamp))

    def clear(self, key: _Key) -> None:
        self.txn.execute("DELETE FROM login_failures WHERE kind = ? AND name = ?", key)

    def sweep(self, horizon: float) -> None:
        self.txn.execute("DELETE FROM login_failures WHERE stamp <= ?", (horizon,))


class DatabaseCounters:
    """
    The failure stamps in the store's PostgreSQL database, table
    C{login_failures} (made at first use), which every node of a cluster
    shares.  Each operation is a function of the counters run in one
    transaction on the database's threads (L{run}); when the database
    fails, the attempt is counted in this process's memory (L{fallback}).

    @ivar database: the L{mailplat.store.sql.database.Database}.
    @ivar fallback: the L{MemoryCounters} used when the database fails.
    """

    def __init__(self, database: Any, keep: int, maxEntries: int = 100_000) -> None:
        from mailplat.store.sql.database import TablesOnFirstUse

        self.database = database
        self.fallback = MemoryCounters(keep, maxEntries)
        self._namespace = "login-failures:" + (getattr(database, "schema", None) or "")
        self._tables = TablesOnFirstUse(database, _FAILURES_SCHEMA)

    def run(self, f: Any) -> defer.Deferred:
        """
        C{f(counters)} in one transaction of the database.

        @return: a Deferred firing with its result.
        """
        return self._tables.run(lambda txn: f(_TransactionCounters(txn, self._namespace)))


class LoginThrottle:
    """
    The failure counters and the rules.  Driven by C{clock} alone
    (C{task.Clock} in tests).

    @ivar clock: provides C{seconds()} and C{callLater}.
    @ivar delayAfter: failures in the window after which attempts wait.
    @ivar refuseAfter: failures in the window from which attempts are
        refused at once.
    @ivar window: seconds a failure is remembered.
    @ivar baseDelay: the first wait, seconds; each further failure doubles
        it.
    @ivar maxDelay: the longest wait, seconds.
    @ivar exemptLoopback: whether loopback clients are spared the
        per-address counter (a local webmail logs everyone in from one
        address); their accounts are still counted.
    @ivar maxEntries: most counters kept in memory; beyond it the least
        recently used are forgotten, so a spray of made-up names cannot
        exhaust memory.
    """

    def __init__(
        self,
        clock: IReactorTime,
        delayAfter: int = 5,
        refuseAfter: int = 30,
        window: float = 900.0,
        baseDelay: float = 1.0,
        maxDelay: float = 30.0,
        exemptLoopback: bool = False,
        maxEntries: int = 100_000,
        path: Optional[str] = None,
        database: Any = None,
    ) -> None:
        """
        @param path: the SQLite file the counters are shared in (every
            process of the server gives the same one); in this process's
            memory when None.
        @param database: the store's PostgreSQL database, shared by every
            node, to keep the counters in instead (L{DatabaseCounters}):
            then attempts begin with L{beginLater}, not L{begin}.
        """
        if delayAfter < 0 or refuseAfter < 1 or window <= 0 or baseDelay < 0 or maxDelay < 0 or maxEntries < 1:
            raise ValueError("login throttle: limits must be positive")
        self.clock = clock
        self.delayAfter = delayAfter
        self.refuseAfter = refuseAfter
        self.window = window
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.exemptLoopback = exemptLoopback
        self.maxEntries = maxEntries
        self._counters: Any
        if database is not None:
            self._counters = DatabaseCounters(database, refuseAfter, maxEntries)
        elif path is not None:
            self._counters = SharedCounters(path, refuseAfter, maxEntries)
        else:
            self._counters = MemoryCounters(refuseAfter, maxEntries)
        self._operations = 0

    def _now(self) -> float:
        return self.clock.seconds()

    def failures(self, account: Optional[str] = None, host: Optional[str] = None) -> int:
        """
        The failures (attempts under way included) counted in the window
        against C{account} or from C{host}, whichever is more (counters of
        this host: not those in a database).
        """
        assert not isinstance(self._counters, DatabaseCounters)
        horizon = self._now() - self.window
        return max([0] + [len(self._counters.stamps(key, horizon)) for key in self._keys(account, host)])

    def _keys(self, account: Optional[str], host: Optional[str]) -> Tuple[_Key, ...]:
        keys = []
        if account:
            keys.append(("account", normalizeAddress(account)))
        if host:
            if not (self.exemptLoopback and _isLoopbackHost(host)):
                keys.append(("address", addressKey(host)))
        return tuple(keys)

    def begin(self, account: Optional[str], host: Optional[str]) -> Attempt:
        """
        Start an attempt for C{account} from C{host} (either may be None):
        how long it must wait, counted as a failure until settled.  Not
        for counters in a database (see L{beginLater}).

        @raise LoginThrottled: too many failures; nothing is counted.
        """
        assert not isinstance(self._counters, DatabaseCounters)
        return self._begin(self._counters, self._keys(account, host), self._now(), self._sweeping())

    def beginLater(self, account: Optional[str], host: Optional[str]) -> defer.Deferred:
        """
        L{begin}, for any counters: a Deferred firing with the L{Attempt},
        or failing with L{LoginThrottled}.
        """
        counters = self._counters
        if not isinstance(counters, DatabaseCounters):
            return defer.execute(self.begin, account, host)
        keys = self._keys(account, host)
        now = self._now()
        sweep = self._sweeping()

        def begin(inDatabase: Any) -> Attempt:
            inDatabase.lock(keys)
            return self._begin(inDatabase, keys, now, sweep)

        def failed(failure: Failure) -> Any:
            if failure.check(LoginThrottled):
                return failure
            log.warn("login failure counters in {database} not usable ({error}); counted in this process",
                     database=counters.database.description, error=failure.getErrorMessage())
            return self._begin(counters.fallback, keys, now, sweep)

        return counters.run(begin).addErrback(failed)

    def _sweeping(self) -> bool:
        """
        Whether this operation also drops the stamps out of the window
        (every 1,024th).
        """
        self._operations += 1
        if self._operations >= 1024:
            self._operations = 0
            return True
        return False

    def _begin(self, counters: Any, keys: Tuple[_Key, ...], now: float, sweep: bool) -> Attempt:
        """
        L{begin} on C{counters}.
        """
        horizon = now - self.window
        if sweep:
            counters.sweep(horizon)
        worst = 0
        retryAfter = 0.0
        counts = []
        with counters.transaction():
            for key in keys:
                times = counters.stamps(key, horizon)
                count = len(times)
                counts.append(count + 1)
                worst = max(worst, count)
                if count >= self.refuseAfter:
                    # Allowed again once the count falls below refuseAfter.
                    retryAfter = max(retryAfter, times[count - self.refuseAfter] + self.window - now)
            if worst >= self.refuseAfter:
                raise LoginThrottled("Too many failed logins; try again later", retryAfter)
            counters.add(keys, now)
        delay = 0.0
        if worst >= self.delayAfter:
            delay = min(self.baseDelay * (2.0 ** min(worst - self.delayAfter, 64)), self.maxDelay)
        return Attempt(keys, now, delay, tuple(counts))

    def _settle(self, attempt: Attempt, change: Any) -> defer.Deferred:
        """
        C{change(counters)} once per attempt: at once, or in the database
        (an error is logged).

        @return: a Deferred firing when it is done (callers need not wait).
        """
        if attempt.settled:
            return defer.succeed(None)
        attempt.settled = True
        counters = self._counters
        if not isinstance(counters, DatabaseCounters):
            change(counters)
            return defer.succeed(None)

        def failed(failure: Failure) -> None:
            log.warn("login failure counters in {database} not usable ({error}); an attempt stays as counted",
                     database=counters.database.description, error=failure.getErrorMessage())

        return counters.run(change).addErrback(failed)

    def succeeded(self, attempt: Attempt) -> defer.Deferred:
        """
        The attempt logged in: the account's failures are forgotten, the
        attempt is taken back from the address's.
        """
        def change(counters: Any) -> None:
            for key in attempt.keys:
                if key[0] == "account":
                    counters.clear(key)
                else:
                    counters.withdraw(key, attempt.stamp)

        return self._settle(attempt, change)

    def failed(self, attempt: Attempt) -> defer.Deferred:
        """
        The credentials were wrong: the attempt stays counted as it is (no
        change to the counters, none to the database); the failure that
        brings a counter to C{delayAfter} or C{refuseAfter} is logged,
        by the counts taken when the attempt began.
        """
        if not attempt.settled:
            attempt.settled = True
            for key, count in zip(attempt.keys, attempt.counts):
                if count in (self.delayAfter, self.refuseAfter):
                    what = "slowing down" if count == self.delayAfter else "refusing"
                    log.info("{count} failed logins for {kind} {name}: {what} further attempts",
                             count=count, kind=key[0], name=key[1], what=what)
        return defer.succeed(None)

    def aborted(self, attempt: Attempt) -> defer.Deferred:
        """
        The attempt ended without a verdict (the checker broke, the
        credentials were of an unknown kind): it is taken back.
        """
        def change(counters: Any) -> None:
            for key in attempt.keys:
                counters.withdraw(key, attempt.stamp)

        return self._settle(attempt, change)


def _isLoopbackHost(host: str) -> bool:
    kind = IPv6Address if ":" in host else IPv4Address
    return isLoopback(kind("TCP", host, 0))


def _accountOf(credentials: Any) -> Optional[str]:
    username = getattr(credentials, "username", None)
    if isinstance(username, bytes):
        username = username.decode("utf-8", "replace")
    if not isinstance(username, str) or not username.strip():
        return None
    return username


def _hostOf(mind: Any) -> Optional[str]:
    """
    The client address a protocol passed as C{mind}: its host as text, an
    address object with a C{host}, or None.
    """
    if isinstance(mind, bytes):
        mind = mind.decode("ascii", "replace")
    if isinstance(mind, str):
        return mind or None
    host = getattr(mind, "host", None)
    if isinstance(host, str) and host:
        return host
    return None


class ThrottledPortal(Portal):
    """
    A L{Portal} whose logins go through a L{LoginThrottle}.

    @ivar throttle: the L{LoginThrottle}.
    """

    def __init__(self, realm: IRealm, checkers: Any = (), throttle: Optional[LoginThrottle] = None,
                 clock: Optional[IReactorTime] = None) -> None:
        """
        @param throttle: the throttle; one with the default rules on
            C{clock} when None.
        @param clock: the reactor, when C{throttle} is None (the global
            reactor when this is None too).
        """
        super().__init__(realm, checkers)
        if throttle is None:
            if clock is None:
                from twisted.internet import reactor

                clock = reactor
            throttle = LoginThrottle(clock)
        self.throttle = throttle

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        """
        See L{Portal.login}.  C{mind} is the client's address
        (C{transport.getPeer().host}) or None.

        @return: a Deferred that fails with L{LoginThrottled} at once when
            the account or the address has failed too often, and otherwise
            fires (after the throttle's delay) as L{Portal.login} does.
        """
        def check(attempt: Attempt) -> defer.Deferred:
            if attempt.delay > 0:
                d = task.deferLater(self.throttle.clock, attempt.delay, Portal.login, self, credentials, mind, *interfaces)
            else:
                d = defer.maybeDeferred(Portal.login, self, credentials, mind, *interfaces)

            def settled(result: Any) -> Any:
                if isinstance(result, Failure):
                    if result.check(UnauthorizedLogin):
                        self.throttle.failed(attempt)
                    else:
                        self.throttle.aborted(attempt)
                else:
                    self.throttle.succeeded(attempt)
                return result

            return d.addBoth(settled)

        return self.throttle.beginLater(_accountOf(credentials), _hostOf(mind)).addCallback(check)
