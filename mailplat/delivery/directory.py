"""
The default directory: the store's accounts are the addresses that exist.
"""

from typing import Iterable, List

from twisted.internet import defer
from zope.interface import implementer

from mailplat.address import normalizeAddress, splitAddress
from mailplat.interfaces import IDirectory, IStore


@implementer(IDirectory)
class StoreDirectory:
    """
    An address exists when the store has an account for it.

    Local domains are the configured ones; with none configured, every
    domain that has at least one account is local (so a fresh install that
    adds C{alice@example.test} receives mail for example.test and relays
    nothing).  Aliases, catch-alls and plus-addressing belong to the MTA
    issue and are not answered here yet.

    @ivar store: the L{IStore}.
    @ivar domains: the configured domains (lower-case), possibly empty.
    """

    def __init__(self, store: IStore, domains: Iterable[str] = ()) -> None:
        self.store = store
        self.domains = frozenset(d.lower().rstrip(".") for d in domains)

    @defer.inlineCallbacks
    def isLocalDomain(self, domain: str):
        """
        See L{IDirectory.isLocalDomain}.
        """
        domain = domain.lower().rstrip(".")
        if self.domains:
            return domain in self.domains
        accounts = yield self.store.listAccounts()
        return any(splitAddress(a)[1] == domain for a in accounts)

    @defer.inlineCallbacks
    def resolve(self, address: str):
        """
        See L{IDirectory.resolve}.
        """
        address = normalizeAddress(address)
        local, domain = splitAddress(address)
        if not domain or not (yield self.isLocalDomain(domain)):
            return []
        exists = yield self.store.hasAccount(address)
        result: List[str] = [address] if exists else []
        return result
