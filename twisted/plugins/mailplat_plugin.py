"""
mailplat's Twisted plugins: the C{twistd mailplat} service maker, the
stores it ships and its own checker.  Wiring only; the code lives in
mailplat/.
"""

from twisted.application.service import ServiceMaker

from mailplat.auth.passwd import PasswordFileCheckerFactory
from mailplat.store.maildir import MaildirStoreFactory
from mailplat.store.mbox import MboxStoreFactory
from mailplat.store.memory import MemoryStoreFactory
from mailplat.store.sql import SQLCheckerFactory, SQLStoreFactory

mailplatServiceMaker = ServiceMaker(
    "mailplat",
    "mailplat.service",
    "A mail server: SMTP, POP3 and IMAP over pluggable stores.",
    "mailplat",
)

maildirStore = MaildirStoreFactory()
memoryStore = MemoryStoreFactory()
mboxStore = MboxStoreFactory()
mailplatChecker = PasswordFileCheckerFactory()
sqlStore = SQLStoreFactory()
sqlChecker = SQLCheckerFactory()
