"""
Greylisting: refuse the first attempt of an unknown (client network,
sender, recipient) triplet with C{451 4.7.1}; a real MTA retries, and
after C{delay} seconds the triplet is accepted from then on.

The client network is the IPv4 /24 (or IPv6 /64), so senders with a pool
of outbound hosts are not delayed at every retry.  The state is a JSON file
(C{<dataDir>/greylist.json}) written atomically on change; entries not
retried within C{retryWindow} or not seen for C{lifetime} are forgotten.
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
from typing import Any, BinaryIO, Dict, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mailplat import netutil
from mailplat.delivery.policy import IPolicy, IRecipientPolicy, Verdict, clientAddress, isAuthenticated

_log = Logger()


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
    Greylisting with its state in a JSON file.

    @ivar path: the state file.
    @ivar clock: an L{IReactorTime} (a L{task.Clock} in tests).
    @ivar delay: seconds before a retry is accepted.
    @ivar retryWindow: seconds a first attempt waits for its retry.
    @ivar lifetime: seconds an accepted triplet stays known without mail.
    @ivar trustLoopback: whether mail from loopback goes unchecked.
    """

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        delay: float = 300.0,
        retryWindow: float = 4 * 3600.0,
        lifetime: float = 36 * 86400.0,
        trustLoopback: bool = True,
    ) -> None:
        self.path = path
        self.trustLoopback = trustLoopback
        self.clock = clock
        self.delay = delay
        self.retryWindow = retryWindow
        self.lifetime = lifetime
        self._entries: Dict[str, Dict[str, Any]] = self._load()

    def _load(self) -> Dict[str, Dict[str, Any]]:
        """
        Read the state file (an empty state when it is missing or broken).
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            _log.warn("greylist state {path} unreadable, starting afresh: {error}", path=self.path, error=str(e))
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def _save(self) -> None:
        """
        Write the state file atomically.
        """
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(self._entries, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def _expire(self, now: float) -> bool:
        """
        Forget stale entries; whether any went.
        """
        stale = [
            key for key, entry in self._entries.items()
            if (entry.get("passed") and now - entry.get("last", 0) > self.lifetime)
            or (not entry.get("passed") and now - entry.get("first", 0) > self.retryWindow)
        ]
        for key in stale:
            del self._entries[key]
        return bool(stale)

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
        changed = self._expire(now)
        wait = 0.0
        for recipient in recipients:
            key = self.key(ip, sender, recipient)
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = {"first": now, "last": now, "passed": False}
                changed = True
                wait = max(wait, self.delay)
            elif entry.get("passed") or now - entry["first"] >= self.delay:
                # Refresh a known triplet at most hourly, not a write per message.
                if not entry.get("passed") or now - entry.get("last", 0) > 3600:
                    entry["passed"] = True
                    entry["last"] = now
                    changed = True
            else:
                wait = max(wait, self.delay - (now - entry["first"]))
        if changed:
            try:
                self._save()
            except OSError as e:
                _log.warn("greylist state {path} not saved: {error}", path=self.path, error=str(e))
        if wait > 0:
            return defer.succeed(Verdict.reject(451, "4.7.1", f"Greylisted, please try again in {int(wait + 0.999)} seconds"))
        return defer.succeed(Verdict.accept())
