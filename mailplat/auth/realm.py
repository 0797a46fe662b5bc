"""
The one realm: turns an authenticated address into the avatar a protocol
talks to.
"""

from typing import Any, Tuple

from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from mailplat.address import normalizeAddress
from mailplat.interfaces import IAccount, IStore


def _noLogout() -> None:
    """
    Nothing to release when a session ends: stores keep no per-login state.
    """


@implementer(IRealm)
class MailRealm:
    """
    Gives IMAP and POP3 sessions the L{IAccount} of the address a checker
    vouched for.  The account (with its INBOX) is made at first login, as
    Dovecot does, so that users known only to a checker plugin get mail
    storage without an admin step.

    @ivar store: the L{IStore} holding the accounts.
    """

    def __init__(self, store: IStore) -> None:
        self.store = store

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> "defer.Deferred[Tuple[Any, Any, Any]]":
        """
        See L{IRealm.requestAvatar}.
        """
        if IAccount not in interfaces:
            raise NotImplementedError("MailRealm only gives IAccount avatars")
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8")
        d = self.store.getAccount(normalizeAddress(avatarId), create=True)
        d.addCallback(lambda account: (IAccount, account, _noLogout))
        return d
