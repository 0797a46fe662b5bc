"""
What the side-by-side benchmarks share: a scratch Dovecot (L{dovecot}), a
mailplat started with C{twistd} (L{mailplat}), the same Maildir fill for
both (L{maildir}), IMAP clients (L{imapclient}) and the process and
machine figures the results record (L{system}).

Everything runs on 127.0.0.1, in scratch directories made for the run,
and every process started is stopped when its context ends.  Nothing
here imports from C{tests/}.
"""
