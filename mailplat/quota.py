"""
Per-account storage quota (RFC 9208 for IMAP; the same check serves local
delivery).

An account's usage is the sum of the wire sizes (and message counts) of
its mailboxes, as each mailbox's L{IMailbox.status} reports them; nothing
is stored besides the limit, which comes from the configuration
(C{[limits] quota}, octets, 0 for none).  The limit is soft by the size of
one message: a message is refused when the usage plus its size would pass
the limit.
"""

from typing import Any, Generator, Optional, Tuple

from twisted.internet import defer

from mailplat.errors import MailboxError, NoSuchMailbox
from mailplat.interfaces import IAccount

__all__ = ["OverQuota", "quotaUsage", "checkQuota"]


class OverQuota(MailboxError):
    """
    Storing a message would take the account over its quota.  IMAP answers
    C{NO [OVERQUOTA]}; SMTP delivery answers C{552 5.2.2}.

    @ivar used: octets in use.
    @ivar limit: the quota in octets.
    @ivar incoming: the size of the refused message.
    """

    def __init__(self, used: int, limit: int, incoming: int) -> None:
        super().__init__(f"Quota exceeded: {used} + {incoming} octets over the limit of {limit}")
        self.used = used
        self.limit = limit
        self.incoming = incoming


@defer.inlineCallbacks
def quotaUsage(account: IAccount) -> Generator[Any, Any, Tuple[int, int]]:
    """
    What an account uses.

    @return: a Deferred firing with C{(octets, messages)} summed over every
        selectable mailbox of C{account}.
    """
    entries = yield account.listMailboxes()
    octets = 0
    messages = 0
    for entry in entries:
        if "\\Noselect" in entry.attributes or "\\NonExistent" in entry.attributes:
            continue
        try:
            mailbox = yield account.getMailbox(entry.name)
            status = yield mailbox.status()
        except (NoSuchMailbox, MailboxError):
            # Deleted or renamed meanwhile.
            continue
        octets += status.size
        messages += status.messages
    return octets, messages


@defer.inlineCallbacks
def checkQuota(
    account: IAccount, limit: Optional[int], incoming: int, messageLimit: int = 0, incomingMessages: int = 1
) -> Generator[Any, Any, Tuple[int, int]]:
    """
    Refuse C{incomingMessages} messages of C{incoming} octets in all that
    would take C{account} over C{limit} octets (or over C{messageLimit}
    messages).

    @param limit: the quota in octets; 0 or L{None} means none.
    @param messageLimit: the most messages the account may hold; 0 means
        no limit.  With neither limit the usage is not even computed and
        C{(0, 0)} is returned.
    @return: a Deferred firing with the usage C{(octets, messages)} before
        the message, or failing with L{OverQuota}.
    """
    if not limit and not messageLimit:
        return 0, 0
    octets, messages = yield quotaUsage(account)
    if limit and octets + incoming > limit:
        raise OverQuota(octets, limit, incoming)
    if messageLimit and messages + incomingMessages > messageLimit:
        raise OverQuota(octets, limit or 0, incoming)
    return octets, messages
