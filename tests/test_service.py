"""
The process-wide settings the server's services make while they run.
"""

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from mailplat.config import Config
from mailplat.service import Server, SwitchIntervalService


class SwitchIntervalTests(SynchronousTestCase):
    """
    L{SwitchIntervalService} shortens the thread switch interval while it
    runs, and every process of the server runs one.
    """

    def setUp(self) -> None:
        before = sys.getswitchinterval()
        self.addCleanup(sys.setswitchinterval, before)
        # A value that neither the default nor the service's own, so that
        # putting it back is seen.
        sys.setswitchinterval(0.0123)

    def test_startAndStop(self) -> None:
        """
        Started, the interval is the service's; stopped, it is the one
        before.
        """
        switch = SwitchIntervalService()
        switch.startService()
        self.assertAlmostEqual(sys.getswitchinterval(), SwitchIntervalService.interval)
        self.assertLess(SwitchIntervalService.interval, 0.005)
        switch.stopService()
        self.assertAlmostEqual(sys.getswitchinterval(), 0.0123)

    def _serviceIn(self, top: object) -> bool:
        return any(isinstance(child, SwitchIntervalService) for child in top)  # type: ignore[attr-defined]

    def test_everyProcess(self) -> None:
        """
        The main process's services and a worker's both hold one.
        """
        config = Config(dataDir=os.path.abspath(self.mktemp()), store="memory", listeners={})
        server = Server(config)
        self.assertTrue(self._serviceIn(server.service()))
        self.assertTrue(self._serviceIn(server.workerService({})))
