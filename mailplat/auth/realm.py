"""
The one realm: turns an authenticated address into the avatar a protocol
talks to.
"""

from typing import Any, Tuple

from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from mailplat.address import normalizeAddress
from mailplat.interfaces import IAccount, ISMTPAvatar, IStore


def _noLogout() -> None:
    """
    Nothing to release when a session ends: stores keep no per-login state.
    """


@implementer(ISMTPAvatar)
class SMTPAvatar:
    """
    An authenticated SMTP client (submission): who it is, nothing more.
    What it may do is decided by the delivery from C{session.authenticated}.

    @ivar address: the normalised address the client logged in as.
    """

    def __init__(self, address: str) -> None:
        self.address = address

    def __repr__(self) -> str:
        return f"<SMTPAvatar {self.address!r}>"


@implementer(IRealm)
class MailRealm:
    """
    Gives IMAP and POP3 sessions the L{IAccount} of the address a checker
    vouched for, and SMTP sessions an L{ISMTPAvatar}.  The account (with
    its INBOX) is made at first IMAP/POP3 login, as Dovecot does, so that
    users known only to a checker plugin get mail storage without an admin
    step; an SMTP login makes no account.

    @ivar store: the L{IStore} holding the accounts.
    """

    def __init__(self, store: IStore) -> None:
        self.store = store

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> "defer.Deferred[Tuple[Any, Any, Any]]":
        """
        See L{IRealm.requestAvatar}.
        """
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8")
        address = normalizeAddress(avatarId)
        for interface in interfaces:
            if interface is ISMTPAvatar:
                return defer.succeed((ISMTPAvatar, SMTPAvatar(address), _noLogout))
            if interface is IAccount:
                break
        else:
            raise NotImplementedError("MailRealm gives IAccount and ISMTPAvatar avatars only")
        d = self.store.getAccount(address, create=True)
        return d.addCallback(lambda account: (IAccount, account, _noLogout))
