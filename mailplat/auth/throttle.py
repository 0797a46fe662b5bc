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

L{ThrottledPortal} is the cred portal that applies a L{LoginThrottle}.  The
client address comes in through C{mind}: protocols call
C{portal.login(credentials, self.transport.getPeer().host, iface)}.  The
realm receives that C{mind} as usual (L{mailplat.auth.realm.MailRealm}
ignores it).
"""

from collections import OrderedDict, deque
from typing import Any, Deque, Optional, Tuple

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailplat.address import normalizeAddress
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
    """

    def __init__(self, keys: Tuple[_Key, ...], stamp: float, delay: float) -> None:
        self.keys = keys
        self.stamp = stamp
        self.delay = delay
        self.settled = False


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
    @ivar maxEntries: most counters kept; beyond it the least recently
        used are forgotten, so a spray of made-up names cannot exhaust
        memory.
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
    ) -> None:
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
        self._failures: "OrderedDict[_Key, Deque[float]]" = OrderedDict()
        self._operations = 0

    def _now(self) -> float:
        return self.clock.seconds()

    def _prune(self, key: _Key, now: float) -> Optional[Deque[float]]:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _sweep(self, now: float) -> None:
        for key in list(self._failures):
            self._prune(key, now)
        while len(self._failures) > self.maxEntries:
            self._failures.popitem(last=False)

    def failures(self, account: Optional[str] = None, host: Optional[str] = None) -> int:
        """
        The failures (attempts under way included) counted in the window
        against C{account} or from C{host}, whichever is more.
        """
        now = self._now()
        counts = [0]
        for key in self._keys(account, host):
            times = self._prune(key, now)
            counts.append(len(times) if times else 0)
        return max(counts)

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
        how long it must wait, counted as a failure until settled.

        @raise LoginThrottled: too many failures; nothing is counted.
        """
        now = self._now()
        self._operations += 1
        if self._operations >= 1024 or len(self._failures) > self.maxEntries:
            self._operations = 0
            self._sweep(now)
        keys = self._keys(account, host)
        worst = 0
        retryAfter = 0.0
        for key in keys:
            times = self._prune(key, now)
            count = len(times) if times else 0
            worst = max(worst, count)
            if times and count >= self.refuseAfter:
                # Allowed again once the count falls below refuseAfter.
                retryAfter = max(retryAfter, times[count - self.refuseAfter] + self.window - now)
        if worst >= self.refuseAfter:
            raise LoginThrottled("Too many failed logins; try again later", retryAfter)
        delay = 0.0
        if worst >= self.delayAfter:
            delay = min(self.baseDelay * (2.0 ** min(worst - self.delayAfter, 64)), self.maxDelay)
        for key in keys:
            times = self._failures.get(key)
            if times is None:
                times = self._failures[key] = deque(maxlen=self.refuseAfter)
            else:
                self._failures.move_to_end(key)
            times.append(now)
        while len(self._failures) > self.maxEntries:
            self._failures.popitem(last=False)
        return Attempt(keys, now, delay)

    def _withdraw(self, attempt: Attempt, key: _Key) -> None:
        times = self._failures.get(key)
        if times is None:
            return
        try:
            times.remove(attempt.stamp)
        except ValueError:
            return
        if not times:
            del self._failures[key]

    def succeeded(self, attempt: Attempt) -> None:
        """
        The attempt logged in: the account's failures are forgotten, the
        attempt is taken back from the address's.
        """
        if attempt.settled:
            return
        attempt.settled = True
        for key in attempt.keys:
            if key[0] == "account":
                self._failures.pop(key, None)
            else:
                self._withdraw(attempt, key)

    def failed(self, attempt: Attempt) -> None:
        """
        The credentials were wrong: the attempt stays counted.
        """
        if attempt.settled:
            return
        attempt.settled = True
        now = self._now()
        for key in attempt.keys:
            times = self._prune(key, now)
            count = len(times) if times else 0
            if count in (self.delayAfter, self.refuseAfter):
                what = "slowing down" if count == self.delayAfter else "refusing"
                log.info("{count} failed logins for {kind} {name}: {what} further attempts",
                         count=count, kind=key[0], name=key[1], what=what)

    def aborted(self, attempt: Attempt) -> None:
        """
        The attempt ended without a verdict (the checker broke, the
        credentials were of an unknown kind): it is taken back.
        """
        if attempt.settled:
            return
        attempt.settled = True
        for key in attempt.keys:
            self._withdraw(attempt, key)


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
        try:
            attempt = self.throttle.begin(_accountOf(credentials), _hostOf(mind))
        except LoginThrottled:
            return defer.fail()
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
