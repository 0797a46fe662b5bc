"""
The same mail for every server: messages made from their number (so a
run is repeatable), written straight into a Maildir's C{cur/} (no server,
no fsync: fast enough for 100,000 messages), then linked into a tree of its own for each server (L{copyTree}).

Files are named as Dovecot and mailplat both name theirs,
C{<time>.M<usec>P<pid>Q<n>.<host>,S=<octets on disk>,W=<octets on the
wire>:2,<flags>}, with LF line ends on disk, and the time part grows with
the message number so that both servers, which give UIDs to new files in
the order of their names, number the messages the same way.  Each file's
mtime is its Date, which both servers take as the internal date.
"""

import os
import random
import shutil
import subprocess
import time
from typing import Dict, Iterable, Optional, Tuple

BASE_TIME = 1700000000
HOST = "bench"

_WORDS = (
    "meeting report budget draft review schedule invoice travel project release notes build server "
    "question answer lunch friday monday update plan quarter numbers design proposal contract deadline"
).split()


def _paragraph(rng: random.Random, lines: int) -> str:
    return "".join(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 12))) + "\n" for _ in range(lines))


def message(n: int, small: bool = False) -> bytes:
    """
    Message number C{n} (from 0), LF line ends, as it is kept on disk.

    With C{small}, a single text part of about 600 octets (for the big
    mailboxes); otherwise 70% text/plain of 1-4 KB, 20%
    multipart/alternative and 10% multipart/mixed with a base64
    attachment of 8-24 KB.
    """
    rng = random.Random(n)
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(BASE_TIME + n))
    subject = f"{'Re: ' if n % 3 == 1 else ''}Topic number {n % 211} {rng.choice(_WORDS)}"
    if n % 17 == 5:
        subject = "=?UTF-8?Q?R=C3=A9sum=C3=A9?= " + subject
    headers = [
        f"Return-Path: <s{n % 97}@sender{n % 7}.example>",
        f"From: Sender {n % 97} <s{n % 97}@sender{n % 7}.example>",
        "To: Bench User <user@example.test>",
    ]
    if n % 5 == 0:
        headers.append(f"Cc: Other {n % 13} <o{n % 13}@example.org>, team@example.org")
    headers += [f"Subject: {subject}", f"Date: {date}", f"Message-ID: <{n}.{rng.randrange(10**9)}@bench.example>"]
    if n % 3 == 1 and n > 0:
        headers.append(f"In-Reply-To: <{n - 1}@bench.example>")
    headers.append("MIME-Version: 1.0")
    kind = "plain" if small else rng.choices(["plain", "alternative", "mixed"], [70, 20, 10])[0]
    if kind == "plain":
        headers.append("Content-Type: text/plain; charset=utf-8")
        body = _paragraph(rng, 6 if small else rng.randint(15, 55))
    elif kind == "alternative":
        headers.append('Content-Type: multipart/alternative; boundary="alt-%d"' % n)
        text = _paragraph(rng, rng.randint(10, 30))
        html = "<html><body><p>" + text.replace("\n", "</p>\n<p>") + "</p></body></html>\n"
        body = (
            f"--alt-{n}\nContent-Type: text/plain; charset=utf-8\n\n{text}\n"
            f"--alt-{n}\nContent-Type: text/html; charset=utf-8\n\n{html}\n"
            f"--alt-{n}--\n"
        )
    else:
        headers.append('Content-Type: multipart/mixed; boundary="mix-%d"' % n)
        import base64

        blob = base64.encodebytes(rng.randbytes(rng.randint(6000, 18000))).decode()
        body = (
            f"--mix-{n}\nContent-Type: text/plain; charset=utf-8\n\n{_paragraph(rng, 8)}\n"
            f'--mix-{n}\nContent-Type: application/pdf; name="r{n}.pdf"\n'
            f'Content-Disposition: attachment; filename="r{n}.pdf"\nContent-Transfer-Encoding: base64\n\n'
            f"{blob}\n--mix-{n}--\n"
        )
    return ("\n".join(headers) + "\n\n" + body).encode()


def fileName(n: int, data: bytes, flags: str) -> str:
    """
    The Maildir file name of message C{n} with content C{data} (LF line
    ends) and info C{flags} (letters, sorted).
    """
    wire = len(data) + data.count(b"\n")
    return f"{BASE_TIME + n}.M{n % 1000000:06d}P1Q{n}.{HOST},S={len(data)},W={wire}:2,{flags}"


def flagsOf(n: int) -> str:
    """
    Message C{n}'s flags: two in three seen, one in ten flagged, one in
    twenty answered.
    """
    letters = ""
    if n % 10 == 3:
        letters += "F"
    if n % 20 == 7:
        letters += "R"
    if n % 3 != 0:
        letters += "S"
    return letters


def makeMaildir(path: str) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)


def fill(path: str, count: int, small: bool = False, seconds: float = 600.0) -> int:
    """
    Write C{count} messages into the Maildir at C{path} (made if needed),
    straight into C{cur/}; stop after C{seconds} (a bound, said in the
    return value).

    @return: how many messages were written.
    """
    makeMaildir(path)
    cur = os.path.join(path, "cur")
    deadline = time.monotonic() + seconds
    for n in range(count):
        if n % 1000 == 0 and time.monotonic() > deadline:
            return n
        data = message(n, small)
        name = os.path.join(cur, fileName(n, data, flagsOf(n)))
        with open(name, "wb") as f:
            f.write(data)
        stamp = BASE_TIME + n
        os.utime(name, (stamp, stamp))
    return count


def accountMaildir(root: str, address: str) -> str:
    """
    Where an account's INBOX lives under a mail root, in the layout both
    servers are given here: C{<root>/<domain>/<localpart>/Maildir}
    (mailplat's own layout; Dovecot's C{mail_location} says the same).
    """
    local, _, domain = address.rpartition("@")
    return os.path.join(root, domain, local, "Maildir")


def copyTree(source: str, target: str, owner: Optional[str] = None) -> None:
    """
    Copy a filled tree for one server, handing it to C{owner}
    (C{user:group}) if given.  The directories are new, the message files
    hard links (C{cp -al}): neither server writes into a message file (a
    Maildir changes flags by renaming and expunges by unlinking, which
    touch only the server's own directory entries), and linking 50,000
    files costs a fraction of copying them.
    """
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    if os.path.exists(target):
        shutil.rmtree(target)
    subprocess.run(["cp", "-al", source, target], check=True)
    if owner:
        subprocess.run(["chown", "-R", owner, target], check=True)


class Fill:
    """
    One filled mail root per user set, reused by every server of a run.

    @ivar root: the pristine tree (C{<root>/<domain>/<local>/Maildir}).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.counts: Dict[str, int] = {}

    def add(self, addresses: Iterable[str], count: int, small: bool = False, seconds: float = 600.0) -> Tuple[int, float]:
        """
        Fill one INBOX of C{count} messages and link it (L{copyTree}) for
        every other address.

        @return: the count written and the seconds taken.
        """
        began = time.monotonic()
        addresses = list(addresses)
        first = accountMaildir(self.root, addresses[0])
        written = fill(first, count, small, seconds)
        for address in addresses:
            self.counts[address] = written
            if address != addresses[0]:
                copyTree(first, accountMaildir(self.root, address))
        return written, time.monotonic() - began
