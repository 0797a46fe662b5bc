"""
SMTP for mailplat: the ESMTP server protocol (L{mailplat.smtp.server}) and
the RFC 5321 syntax it checks (L{mailplat.smtp.syntax}).
"""
