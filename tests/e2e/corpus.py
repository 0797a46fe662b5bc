"""
Messages that exercise MIME structure, address syntax and broken input,
for differential tests against a trusted peer (tests/e2e/test_dovecot.py).
"""
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email import policy


def crlf(b: bytes) -> bytes:
    """
    The wire form: every line ends in CRLF.
    """
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def corpus() -> list:
    """
    (name, wire bytes) pairs.
    """
    out = []
    out.append(("simple", b"From: Alice <alice@example.test>\nTo: bob@example.test\nSubject: hello\nDate: Tue, 24 Nov 2026 10:00:00 +0100\nMessage-ID: <1@x>\n\nHello\nworld\n"))
    out.append(("noheaders-body", b"\nbody only\n"))
    out.append(("header-only", b"Subject: x\n"))
    out.append(("no-blank", b"Subject: x\nFrom: a@b.test\n"))
    out.append(("encoded", "From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>\nTo: \"Doe, John\" <john@example.test>, group: a@b.test, c@d.test;, undisclosed-recipients:;\nCc: <plain@example.test>\nReply-To: r@example.test\nSubject: =?koi8-r?b?8NLJ18XU?= and more\nIn-Reply-To: <prev@x>\nDate: 1 Jan 2020 00:00 GMT\n\nbody\n".encode()))
    m = MIMEMultipart("alternative")
    m["Subject"] = "alt"
    m["From"] = "a@b.test"
    m.attach(MIMEText("plain text\nline2\n", "plain", "utf-8"))
    m.attach(MIMEText("<p>html</p>\n", "html", "iso-8859-1"))
    out.append(("alternative", m.as_bytes()))
    mixed = MIMEMultipart("mixed")
    mixed["Subject"] = "mixed"
    mixed["From"] = "a@b.test"
    mixed.attach(m)
    att = MIMEApplication(b"\x00\x01\x02" * 100, Name="data.bin")
    att.add_header("Content-Disposition", "attachment", filename="data.bin")
    att.add_header("Content-ID", "<cid1@x>")
    att.add_header("Content-Description", "some data")
    att.add_header("Content-Language", "en, de")
    att.add_header("Content-Location", "http://x.test/y")
    mixed.attach(att)
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner["From"] = "i@b.test"
    inner["To"] = "j@b.test"
    inner.set_content("inner body\n")
    mixed.attach(MIMEMessage(inner))
    out.append(("mixed-nested", mixed.as_bytes()))
    qp = EmailMessage(policy=policy.SMTP)
    qp["Subject"] = "qp"
    qp["From"] = "a@b.test"
    qp.set_content("caf\u00e9 " * 50, cte="quoted-printable")
    out.append(("qp", qp.as_bytes()))
    out.append(("bad-boundary", b"Subject: bad\nContent-Type: multipart/mixed; boundary=\"zz\"\n\n--yy\nContent-Type: text/plain\n\nx\n--yy--\n"))
    out.append(("missing-end", b"Subject: bad\nContent-Type: multipart/mixed; boundary=\"zz\"\n\npreamble\n--zz\nContent-Type: text/plain\n\nx\n--zz\nContent-Type: text/html\n\n<b>y</b>\n"))
    out.append(("8bit-header", "Subject: caf\u00e9 na\u00efve\nFrom: Ren\u00e9 <r@b.test>\n\n8bit body \u00e9\n".encode("utf-8")))
    out.append(("params", b"Subject: p\nContent-Type: text/plain; charset=\"UTF-8\"; format=flowed; delsp=yes\nContent-Transfer-Encoding: 8bit\nContent-Disposition: inline\n\nx\n"))
    out.append(("rfc2231", b"Subject: p\nContent-Type: application/pdf; name*=utf-8''%E2%82%AC.pdf\nContent-Disposition: attachment; filename*=utf-8''%E2%82%AC.pdf\nContent-Transfer-Encoding: base64\n\nAAAA\n"))
    out.append(("message-digest", b"Subject: d\nContent-Type: multipart/digest; boundary=b\n\n--b\n\nSubject: d1\n\nd1 body\n--b\nContent-Type: text/plain\n\nnot a message\n--b--\n"))
    out.append(("no-trailing-newline", b"Subject: n\n\nno newline at end"))
    out.append(("long-line", b"Subject: l\n\n" + b"x" * 5000 + b"\n"))
    out.append(("address-edge", b"From: \"quoted \\\"name\\\"\" <q@b.test> (comment)\nTo: bare@b.test (Comment Name), <@route.test:r@b.test>, nodomain\nSender: \nBcc: a@b.test\nSubject:\n\nx\n"))
    out.append(("uppercase-type", b"Subject: u\nContent-Type: TEXT/HTML; CHARSET=UTF-8\n\n<p>x</p>\n"))
    return [(name, crlf(data)) for name, data in out]
