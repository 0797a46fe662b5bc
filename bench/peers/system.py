"""
The machine and process figures a benchmark result records: core count,
kernel, load, and the memory of a server's process tree.
"""

import os
import platform
import shutil
import statistics
import subprocess
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple


def machine() -> str:
    """
    One line naming the machine and its load right now: C{nproc},
    C{uname -r} and the load averages of C{uptime}.
    """
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return f"nproc {os.cpu_count()}, kernel {platform.release()}, load average {load}"


def children() -> Dict[int, List[int]]:
    """
    Every process's children, by parent pid, read from C{/proc}.
    """
    tree: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces: parse after its ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(name))
    return tree


def processTree(pid: int) -> List[int]:
    """
    C{pid} and all its descendants.
    """
    tree = children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def commandName(pid: int) -> str:
    """
    The process's command name (C{/proc/<pid>/comm}), or C{""} if it is gone.
    """
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def memoryKiB(pids: Iterable[int]) -> Tuple[int, int]:
    """
    The summed resident set size and proportional set size (PSS: shared
    pages divided among the processes sharing them) of C{pids}, in KiB.
    Summed RSS counts a shared library once per process; PSS does not.
    """
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def percentile(values: Sequence[float], fraction: float) -> float:
    """
    The C{fraction} (0-1) percentile of C{values}, by nearest rank.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


def median(values: Sequence[float]) -> float:
    """
    The median, or NaN for no values.
    """
    return statistics.median(values) if values else float("nan")


def ratio(ours: float, theirs: float, higherIsBetter: bool) -> str:
    """
    How mailplat compares with Dovecot, written so that above 1 is better
    for mailplat: C{ours / theirs} for throughput, C{theirs / ours} for
    times.
    """
    if not ours or not theirs or ours != ours or theirs != theirs:
        return "n/a"
    value = ours / theirs if higherIsBetter else theirs / ours
    return f"{value:.2f}x"


class ScratchServer:
    """
    A server a bench started as a child process in a scratch directory of
    its own: its process tree, stopping it (SIGTERM, then SIGKILL to the
    tree after 60 s) and removing the directory.  Subclasses set
    C{process} (a L{subprocess.Popen}) in C{start} and C{dir}.
    """

    process: Optional[subprocess.Popen] = None
    dir: str

    def start(self) -> Any:
        raise NotImplementedError

    def pids(self) -> List[int]:
        """
        The server's process and all its descendants.
        """
        return processTree(self.process.pid) if self.process else []

    def stop(self) -> None:
        """
        Stop the server and wait for it.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        """
        Stop the server and remove its scratch directory.
        """
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def cpuSeconds(pids: Iterable[int]) -> float:
    """
    The CPU time (user and system) of C{pids} and of their children that
    have exited and been waited for, from C{/proc/<pid>/stat} (in clock
    ticks: fine for runs of seconds).  A process gone meanwhile counts 0.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (1-based); fields[0] is field 3.
        total += sum(int(v) for v in fields[11:15])
    return total / tick


def settle(pids: Callable[[], Iterable[int]], seconds: float = 30.0, window: float = 0.3) -> float:
    """
    Wait until the processes C{pids()} have gone idle: less than 3% of a
    core over C{window} seconds, twice in a row (a server's work left over
    from a run, such as the message index it writes after a burst of
    deliveries, is then done: counted in that run's CPU, and not taking
    the next run's).  At most C{seconds}.

    @return: the seconds waited.
    """
    began = time.monotonic()
    quiet = 0
    last = cpuSeconds(pids())
    while quiet < 2 and time.monotonic() - began < seconds:
        time.sleep(window)
        now = cpuSeconds(pids())
        quiet = quiet + 1 if now - last < 0.03 * window else 0
        last = now
    return time.monotonic() - began
