"""
mailplat: a mail server platform (SMTP, POP3, IMAP) on Twisted.
"""

__version__ = "0.1.0"
