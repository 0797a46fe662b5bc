"""
POP3 on a big maildrop: login, STAT, UIDL and RETR of every message of a
10,000-message INBOX, against a running server, or mailplat beside
Dovecot in the same run on the same mail.

    python bench/pop3_retr.py --data-dir D --fill 10000      # put the messages in (Maildir store)
    python bench/pop3_retr.py [--host 127.0.0.1] [--port 1110] [--user alice@example.test] [--password pw]
                              [--window 50] [--seconds 120]

    /work/venv/bin/python bench/pop3_retr.py --vs-dovecot [--messages 10000] [--repeat 3] [--workers 1]
                                             [--baseline REV]

With C{--vs-dovecot} (root, Debian's dovecot-pop3d) one maildrop of
C{--messages} messages (1-25 KB, L{bench.peers.maildir}) is written
straight into C{cur/}, each server gets its own copy (C{cp -al}: new
directories, the files linked) and is started (L{bench.peers}), and two
sessions run one after the other: the first finds a maildrop the server
has never indexed (a third of it unseen, which its QUIT flags seen), the
second finds it indexed and seen.  The servers' order alternates between
repeats; medians are shown.  Beside
each step's wall-clock time the table gives the server's CPU time per
RETR (summed over its processes and threads, from
C{/proc/<pid>/task/<tid>/schedstat}), which a loaded machine disturbs
less.  C{--baseline REV} runs a third server, mailplat with the modules
on the RETR path that the bench measures (L{BASELINE_MODULES}: the POP3
server, the metrics hooks, the connection limits) as they were at git
revision C{REV}, or as in the file C{REV} names (the POP3 server alone),
or as in the directory C{REV} names (those of the modules' files it
holds, by base name: C{server.py}, C{metrics.py}, C{limits.py}), the rest
of the tree as it is, in the same alternation: a paired A/B of a change.

Loopback only.  RETRs are pipelined C{--window} at a time (RFC 2449
PIPELINING), the way a fetching client such as fetchmail does; the
session ends with QUIT and deletes nothing, so runs can be repeated.
Bounded by the maildrop and a time limit; prints one table row.
"""

import argparse
import io
import os
import socket
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional


def fill(dataDir: str, user: str, count: int, size: int) -> None:
    """
    Append C{count} messages of about C{size} octets to C{user}'s INBOX in
    the Maildir store under C{dataDir}, in batches that share commits.
    """
    from twisted.internet import defer, task

    from mailplat.store.maildir import MaildirStoreFactory

    line = b"y" * 76 + b"\r\n"
    body = line * max(1, size // len(line))

    @defer.inlineCallbacks
    def run(reactor):  # type: ignore[no-untyped-def]
        began = time.monotonic()
        store = MaildirStoreFactory().makeStore("", dataDir)
        account = yield store.getAccount(user, create=True)
        inbox = yield account.getMailbox("INBOX")
        for start in range(0, count, 200):
            yield defer.gatherResults([
                inbox.append(io.BytesIO(b"Subject: pop3 bench %d\r\n\r\n" % i + body))
                for i in range(start, min(count, start + 200))
            ])
        yield store.close()
        print(f"filled {count} messages in {time.monotonic() - began:.1f}s")

    task.react(run)


class Session:
    """
    A POP3 client reading replies off a buffered socket.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb", buffering=1 << 16)

    def line(self) -> bytes:
        data = self.file.readline()
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def ok(self) -> bytes:
        data = self.line()
        if not data.startswith(b"+OK"):
            raise RuntimeError(data.decode("utf-8", "replace").strip())
        return data

    def multiline(self) -> int:
        """
        Read a multi-line body to its C{.}; its size in octets.
        """
        total = 0
        while True:
            data = self.line()
            if data == b".\r\n":
                return total
            total += len(data)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def cpuTimes(pids: Iterable[int]) -> Dict[int, float]:
    """
    CPU seconds used so far by each process of C{pids} (all its threads),
    from the scheduler's nanosecond counters.
    """
    times: Dict[int, float] = {}
    for pid in pids:
        total = 0
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            continue
        times[pid] = total / 1e9
    return times


def cpuSpent(before: Dict[int, float], after: Dict[int, float]) -> float:
    """
    CPU seconds used between two L{cpuTimes} readings by the processes
    present at both.
    """
    return sum(after[pid] - before[pid] for pid in after if pid in before)


def measure(host: str, port: int, user: str, password: str, window: int, seconds: float,
            pids: Optional[Callable[[], List[int]]] = None) -> dict:
    """
    One session: login, STAT, UIDL, RETR of every message (C{window} in
    flight), QUIT.

    @param pids: the server's processes, for its CPU time during RETR
        and QUIT.
    @return: seconds by step, C{count}, C{received}, C{octets}, and the
        CPU seconds of the server (C{RETR cpu}, C{QUIT cpu}) and of this
        client (C{RETR client cpu}).
    """
    timings: dict = {}
    serverCPU = (lambda: cpuTimes(pids())) if pids is not None else (lambda: {})
    s = Session(port, host)
    s.ok()
    start = time.monotonic()
    s.send(b"USER " + user.encode() + b"\r\n")
    s.ok()
    s.send(b"PASS " + password.encode() + b"\r\n")
    s.ok()
    timings["login"] = time.monotonic() - start

    start = time.monotonic()
    s.send(b"STAT\r\n")
    count = int(s.ok().split()[1])
    timings["STAT"] = time.monotonic() - start

    start = time.monotonic()
    s.send(b"UIDL\r\n")
    s.ok()
    s.multiline()
    timings["UIDL"] = time.monotonic() - start

    cpu, clientCPU = serverCPU(), time.process_time()
    start = time.monotonic()
    deadline = start + seconds
    octets = sent = received = 0
    while received < count and time.monotonic() < deadline:
        while sent < count and sent - received < window:
            sent += 1
            s.send(b"RETR %d\r\n" % sent)
        s.ok()
        octets += s.multiline()
        received += 1
    while received < sent:
        s.ok()
        octets += s.multiline()
        received += 1
    timings["RETR"] = time.monotonic() - start
    timings["RETR client cpu"] = time.process_time() - clientCPU
    after = serverCPU()
    timings["RETR cpu"] = cpuSpent(cpu, after)
    start = time.monotonic()
    s.send(b"QUIT\r\n")
    s.ok()
    timings["QUIT"] = time.monotonic() - start
    timings["QUIT cpu"] = cpuSpent(after, serverCPU())
    timings.update(count=count, received=received, octets=octets)
    return timings


#: The modules C{--baseline} takes from another revision: the POP3 server
#: and the wrappers every connection and command goes through.
BASELINE_MODULES = {"mailplat.pop3.server": "mailplat/pop3/server.py", "mailplat.metrics": "mailplat/metrics.py",
                    "mailplat.limits": "mailplat/limits.py"}

#: Runs twistd with some modules (name to file) taken from other files.
BASELINE_TWISTD = """\
import importlib, importlib.util, sys
for name, path in {paths!r}.items():
    parent, _, child = name.rpartition(".")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    setattr(importlib.import_module(parent), child, module)
    spec.loader.exec_module(module)
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
"""


def baselineModules(revision: str, tree: str, repo: str) -> Dict[str, str]:
    """
    Module name to the file of the C{--baseline} version of it: from a
    file (the POP3 server), a directory (its files named as the modules'),
    or a git revision (written into C{tree}).
    """
    import subprocess

    if os.path.isfile(revision):
        return {"mailplat.pop3.server": os.path.abspath(revision)}
    paths: Dict[str, str] = {}
    for name, path in BASELINE_MODULES.items():
        if os.path.isdir(revision):
            found = os.path.join(os.path.abspath(revision), os.path.basename(path))
            if os.path.isfile(found):
                paths[name] = found
            continue
        paths[name] = os.path.join(tree, "baseline_" + name.replace(".", "_") + ".py")
        with open(paths[name], "wb") as f:
            f.write(subprocess.run(["git", "-C", repo, "show", f"{revision}:{path}"],
                                   check=True, capture_output=True).stdout)
    if not paths:
        raise SystemExit(f"--baseline {revision}: none of {sorted(BASELINE_MODULES.values())} in it")
    return paths


def versusDovecot(args: argparse.Namespace) -> int:
    """
    The same maildrop on mailplat and on Dovecot (and on mailplat with
    the modules of C{--baseline}); one table with ratios.
    """
    import shutil
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.peers import system
    from bench.peers.dovecot import Dovecot
    from bench.peers.maildir import Fill, copyTree
    from bench.peers.mailplat import REPO, Mailplat

    user, password = "pop@example.test", "pop password"
    print(f"machine: {system.machine()}")
    tree = tempfile.mkdtemp(prefix="mpbpop")
    results: dict = {}
    ok = True
    baseline = f"mailplat@{os.path.basename(args.baseline)}" if args.baseline else None
    try:
        twistd = None
        if args.baseline:
            paths = baselineModules(args.baseline, tree, REPO)
            print(f"baseline: {paths}")
            wrapper = os.path.join(tree, "twistd_baseline.py")
            with open(wrapper, "w") as f:
                f.write(BASELINE_TWISTD.format(paths=paths))
            twistd = [sys.executable, wrapper]
        mail = os.path.join(tree, "mail")
        written, took = Fill(mail).add([user], args.messages, seconds=600)
        print(f"filled {written} messages in {took:.1f} s")
        for n in range(max(1, min(args.repeat, 9))):
            servers: list = [("mailplat", Mailplat({user: password}, workers=args.workers))]
            if twistd is not None:
                servers.append((baseline, Mailplat({user: password}, workers=args.workers, twistd=twistd)))
            servers.append(("dovecot", Dovecot({user: password})))
            for name, server in servers if n % 2 == 0 else reversed(servers):
                copyTree(os.path.join(mail, "example.test"), os.path.join(server.mailRoot, "example.test"))
                with server:
                    for session in ("first", "second"):
                        r = measure("127.0.0.1", server.ports["pop3"], user, password, args.window, args.seconds,
                                    server.pids)
                        ok = ok and r["received"] == r["count"] == written
                        results.setdefault((name, session), []).append(r)
                        print(f"  run {n + 1}: {name} {session} session: RETR {r['received']} "
                              f"in {r['RETR']:.2f} s, server CPU {r['RETR cpu']:.2f} s, QUIT {r['QUIT']:.3f} s "
                              f"(load {system.machine().rsplit('average ', 1)[1]})", flush=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    names = ["mailplat"] + ([baseline] if baseline else []) + ["dovecot"]
    print(f"\nPOP3, {written} messages, window {args.window}, mailplat --workers {args.workers}, "
          f"median of {len(results[('mailplat', 'first')])} run(s); ratio = Dovecot time / mailplat time")
    ours = [n for n in names if n != "dovecot"]
    print("| session | step | " + " | ".join(names) + " | " + " | ".join(f"{n}/Dovecot" for n in ours) + " |")
    print("|---|---|" + "---:|" * (len(names) + len(ours)))

    def row(session: str, label: str, figure: Callable[[dict], float], fmt: str, higherIsBetter: bool) -> None:
        values = {n: system.median([figure(r) for r in results[(n, session)]]) for n in names}
        cells = [format(values[n], fmt) for n in names]
        ratios = [system.ratio(values[n], values["dovecot"], higherIsBetter) for n in ours]
        print(f"| {session} | {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

    for session in ("first", "second"):
        for step in ("login", "STAT", "UIDL", "RETR", "QUIT"):
            row(session, f"{step} s", lambda r: r[step], ".3f", False)
        row(session, "**RETR messages/s**", lambda r: r["received"] / r["RETR"], ".0f", True)
        row(session, "server CPU per RETR, µs", lambda r: r["RETR cpu"] / max(1, r["received"]) * 1e6, ".1f", False)
        row(session, "server CPU at QUIT, ms", lambda r: r["QUIT cpu"] * 1e3, ".1f", False)
        row(session, "client CPU per RETR, µs", lambda r: r["RETR client cpu"] / max(1, r["received"]) * 1e6,
            ".1f", False)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1110)
    parser.add_argument("--user", default="alice@example.test")
    parser.add_argument("--password", default="pw")
    parser.add_argument("--window", type=int, default=50, help="RETRs in flight")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop RETRs after this long")
    parser.add_argument("--data-dir", help="with --fill: the server's data directory")
    parser.add_argument("--fill", type=int, default=0, help="append this many messages first, then exit")
    parser.add_argument("--size", type=int, default=2048, help="size of the --fill messages")
    parser.add_argument("--vs-dovecot", action="store_true", help="fill, start mailplat and Dovecot, compare")
    parser.add_argument("--messages", type=int, default=10000, help="with --vs-dovecot: maildrop size")
    parser.add_argument("--repeat", type=int, default=3, help="with --vs-dovecot: runs per server")
    parser.add_argument("--workers", type=int, default=1, help="with --vs-dovecot: mailplat's --workers")
    parser.add_argument("--baseline", help="with --vs-dovecot: also run mailplat with the POP3 server, metrics and "
                        "limits modules of this git revision (or this POP3 server file, or the modules' files "
                        "in this directory)")
    args = parser.parse_args()
    if args.fill:
        if not args.data_dir:
            parser.error("--fill needs --data-dir")
        fill(args.data_dir, args.user, args.fill, args.size)
        return 0

    if args.vs_dovecot:
        return versusDovecot(args)
    timings = measure(args.host, args.port, args.user, args.password, args.window, args.seconds)
    count, received, octets = timings["count"], timings["received"], timings["octets"]
    print("| messages | login s | STAT s | UIDL s | RETR all s | RETR messages/s | MB/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    retr = timings["RETR"] or 1e-9
    print(f"| {received} | {timings['login']:.3f} | {timings['STAT']:.3f} | {timings['UIDL']:.3f} "
          f"| {retr:.2f} | {received / retr:.0f} | {octets / retr / 1e6:.1f} |")
    return 0 if received == count else 1


if __name__ == "__main__":
    sys.exit(main())
