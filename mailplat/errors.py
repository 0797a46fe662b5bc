"""
Exceptions shared by every layer.  Protocols turn these into their own
replies (SMTP codes, C{-ERR}, IMAP C{NO}/C{BAD}); a store raises them instead
of leaking C{OSError} or database errors.
"""

from typing import Optional


class MailplatError(Exception):
    """
    Base of every error mailplat raises on purpose.
    """


class ConfigError(MailplatError):
    """
    The configuration or the command line is wrong.  The message is shown to
    the user as it is: it names the file, the key and what was wrong.
    """


class StoreError(MailplatError):
    """
    A store could not do what was asked.
    """


class NoSuchAccount(StoreError):
    """
    No account has that address.
    """


class MailboxError(StoreError):
    """
    A mailbox operation was refused; the message says why (shown to users).
    """


class NoSuchMailbox(MailboxError):
    """
    No mailbox has that name (IMAP C{NO [NONEXISTENT]}).
    """


class MailboxExists(MailboxError):
    """
    A mailbox of that name exists already (IMAP C{NO [ALREADYEXISTS]}).
    """


class InvalidMailboxName(MailboxError):
    """
    The name is not allowed: empty component, C{..}, NUL, control
    characters, too long, or otherwise able to escape the account's storage.
    """


class NoSuchMessage(StoreError):
    """
    The message (UID) is not in the mailbox, or no longer.
    """


class MailboxLocked(StoreError):
    """
    Another session holds the mailbox's exclusive lock (POP3 C{[IN-USE]}).
    """


class SMTPReply(MailplatError):
    """
    Refuse an SMTP step with this reply.

    @ivar code: three-digit reply code.
    @ivar enhanced: RFC 3463 enhanced status code such as C{"5.1.1"}, or None.
    @ivar text: human-readable text.
    """

    def __init__(self, code: int, enhanced: Optional[str], text: str) -> None:
        super().__init__(code, enhanced, text)
        self.code = code
        self.enhanced = enhanced
        self.text = text

    def __str__(self) -> str:
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.text}"
        return f"{self.code} {self.text}"
