"""
SEARCH TEXT / BODY on a big Maildir INBOX, over a real socket against a
running server (C{twistd -n mailplat}, one process): how long
C{UID SEARCH TEXT <word>} and C{UID SEARCH BODY <word>} take cold (the
first search, which builds the message index), warm, and after a restart
of the server (the index read back from its files).

    /work/venv/bin/python bench/imap_search_text.py [--messages 10000,100000]

Each size gets a fresh data directory (in a temporary directory, removed
afterwards): an account made with C{mailplat user add}, then message files
written straight into its C{Maildir/cur} (the store gives them UIDs at the
first SELECT, which is timed apart).  The messages are the small ones of
L{bench/imap_big.py <imap_big.sample>} with a body of about 40 words from a
vocabulary; one word in 100 messages is rare, one is in half of them.
Bounded: at most 200,000 messages; the server listens on 127.0.0.1 only
and is stopped at the end.
"""

import argparse
import imaplib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from imap_big import sample  # noqa: E402

ADDRESS = "bench@example.test"
PASSWORD = "bench password"
VENV = os.path.dirname(sys.executable)
# The repository on the path of the server and the admin command, so the
# twisted.plugins of this checkout (the stores) are found even when the
# package is installed in editable mode.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(HERE), os.environ.get("PYTHONPATH")])))
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu report meeting budget invoice "
    "travel schedule project review update status draft final weekly monthly customer supplier"
).split()


def body(n: int, rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(40)]
    if n % 100 == 7:
        words.insert(rng.randrange(40), "Quetzalcoatl")
    if n % 2 == 0:
        words.insert(rng.randrange(40), "Ubiquitous")
    return " ".join(words[:20]) + "\n" + " ".join(words[20:]) + "\n"


def fill(dataDir: str, messages: int) -> None:
    """
    Make the account and write C{messages} files into its Maildir/cur.
    """
    subprocess.run(
        [os.path.join(VENV, "mailplat"), "--data-dir", dataDir, "user", "add", ADDRESS, "--password-stdin"],
        input=PASSWORD.encode(), check=True, stdout=subprocess.DEVNULL, env=ENV,
    )
    local, domain = ADDRESS.split("@")
    cur = os.path.join(dataDir, "mail", domain, local, "Maildir", "cur")
    os.makedirs(cur, exist_ok=True)
    rng = random.Random(1)
    start = int(time.time()) - messages
    for n in range(messages):
        data = sample(n).replace(b"\r\n", b"\n").replace(b"A short body.\n", body(n, rng).encode())
        name = f"{start + n}.M{n}P1Q{n}.bench:2,S"
        with open(os.path.join(cur, name), "wb") as f:
            f.write(data)
        os.utime(os.path.join(cur, name), (start + n, start + n))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """
    One C{twistd -n mailplat} on a data directory, IMAP only.
    """

    def __init__(self, dataDir: str) -> None:
        self.port = freePort()
        args = [os.path.join(VENV, "twistd"), "-n", "--pidfile=", "-l", os.path.join(dataDir, "twistd.log"),
                "mailplat", "--data-dir", dataDir, "--workers", "1", "--imap", f"tcp:{self.port}:interface=127.0.0.1"]
        for name in ("smtp", "submission", "smtps", "pop3", "pop3s", "imaps"):
            args += ["--" + name, "none"]
        self.process = subprocess.Popen(args, cwd=dataDir, env=ENV)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("the server did not start; see twistd.log")
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not listen within 60 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def timed(client: imaplib.IMAP4, *args: str) -> "tuple[float, int]":
    started = time.perf_counter()
    status, data = client.uid("SEARCH", *args)
    elapsed = time.perf_counter() - started
    assert status == "OK", (status, data)
    return elapsed, len(data[0].split())


def session(port: int) -> "tuple[imaplib.IMAP4, float]":
    client = imaplib.IMAP4("127.0.0.1", port)
    client.login(ADDRESS, PASSWORD)
    started = time.perf_counter()
    status, _ = client.select("INBOX")
    assert status == "OK"
    return client, time.perf_counter() - started


def run(messages: int) -> Dict[str, float]:
    top = tempfile.mkdtemp(prefix="mailplat-search-bench-")
    out: Dict[str, float] = {}
    try:
        dataDir = os.path.join(top, "data")
        started = time.perf_counter()
        fill(dataDir, messages)
        print(f"  filled {messages} messages in {time.perf_counter() - started:.1f} s", flush=True)
        server = Server(dataDir)
        try:
            client, out["first SELECT"] = session(server.port)
            out["TEXT cold (index built)"], hits = timed(client, "TEXT", "quetzalcoatl")
            assert hits == messages // 100 + (1 if messages % 100 > 7 else 0), hits
            out["TEXT warm"], _ = timed(client, "TEXT", "quetzalcoatl")
            out["BODY warm"], _ = timed(client, "BODY", "quetzalcoatl")
            out["BODY warm, half match"], hits = timed(client, "BODY", "ubiquitous")
            assert hits == (messages + 1) // 2, hits
            out["TEXT warm, no match"], _ = timed(client, "TEXT", "nowhere-to-be-found")
            client.logout()
        finally:
            server.stop()
        server = Server(dataDir)
        try:
            client, out["SELECT after restart"] = session(server.port)
            out["TEXT after restart"], _ = timed(client, "TEXT", "quetzalcoatl")
            out["BODY after restart"], _ = timed(client, "BODY", "quetzalcoatl")
            client.logout()
        finally:
            server.stop()
        indexDir = os.path.join(dataDir, "index")
        size = sum(os.path.getsize(os.path.join(indexDir, f)) for f in os.listdir(indexDir))
        out["index size (MB)"] = size / 1e6
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return out


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--messages", default="10000,100000", help="comma-separated mailbox sizes")
    options = parser.parse_args(argv)
    sizes = [int(n) for n in options.messages.split(",")]
    if any(n < 100 or n > 200000 for n in sizes):
        parser.error("each size must be between 100 and 200,000")
    for n in sizes:
        print(f"{n} messages:", flush=True)
        for name, value in run(n).items():
            unit = "" if "size" in name else " s"
            print(f"  {name:28s} {value:8.3f}{unit}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
