"""
Local delivery: what the SMTP listener does with each decision of a
transaction (L{IDelivery}), for mail to this server's own users.
"""

import io
from typing import BinaryIO, List, Optional

from twisted.internet import defer
from zope.interface import implementer

from mailplat.address import splitAddress
from mailplat.errors import SMTPReply
from mailplat.interfaces import IDelivery, IDirectory, IStore


class PrefixedReader(io.RawIOBase):
    """
    A read-only binary file that yields C{prefix} then the rest of
    C{source} (from its current position), without copying C{source}.
    Used to put the C{Return-Path} header in front of a spooled message.
    """

    def __init__(self, prefix: bytes, source: BinaryIO) -> None:
        self._prefix = prefix
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        size = len(buffer)
        if self._prefix:
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
        else:
            chunk = self._source.read(size)
        buffer[: len(chunk)] = chunk
        return len(chunk)


@implementer(IDelivery)
class LocalDelivery:
    """
    Accepts mail for addresses the directory knows and puts it in their
    INBOX; refuses everything else, so the server is never an open relay.

    @ivar directory: the L{IDirectory} answering which addresses exist.
    @ivar store: the L{IStore} holding the accounts.
    """

    def __init__(self, directory: IDirectory, store: IStore) -> None:
        self.directory = directory
        self.store = store

    def validateSender(self, session: object, sender: Optional[str]) -> "defer.Deferred[None]":
        """
        Any syntactically valid reverse path is accepted (SPF and friends
        come with the security issue).
        """
        return defer.succeed(None)

    @defer.inlineCallbacks
    def validateRecipient(self, session: object, recipient: str):
        """
        C{554 5.7.1} for a domain that is not ours (no relaying for anyone
        yet: authenticated submission comes with the MTA issue), C{550 5.1.1}
        for an unknown user of our domains.
        """
        local, domain = splitAddress(recipient)
        if not domain or not (yield self.directory.isLocalDomain(domain)):
            raise SMTPReply(554, "5.7.1", f"<{recipient}>: Relay access denied")
        accounts = yield self.directory.resolve(recipient)
        if not accounts:
            raise SMTPReply(550, "5.1.1", f"<{recipient}>: Recipient address rejected: User unknown")

    @defer.inlineCallbacks
    def deliver(self, session: object, sender: Optional[str], recipients: List[str], message: BinaryIO):
        """
        Append the message to the INBOX of every account the recipients
        resolve to (each account once), with a C{Return-Path} header; fires
        when every copy is durable.
        """
        returnPath = b"Return-Path: <" + (sender or "").encode("utf-8") + b">\r\n"
        accounts: List[str] = []
        for recipient in recipients:
            for address in (yield self.directory.resolve(recipient)):
                if address not in accounts:
                    accounts.append(address)
        if not accounts:
            raise SMTPReply(550, "5.1.1", "No recipient exists any more")
        for address in accounts:
            account = yield self.store.getAccount(address)
            inbox = yield account.getMailbox("INBOX")
            message.seek(0)
            yield inbox.append(io.BufferedReader(PrefixedReader(returnPath, message), 65536))
