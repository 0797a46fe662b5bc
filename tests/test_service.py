"""
The process-wide settings the server's services make while they run.
"""

import gc
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from mailplat.config import Config
from mailplat.service import InterpreterService, Server


class InterpreterServiceTests(SynchronousTestCase):
    """
    L{InterpreterService} shortens the thread switch interval and freezes
    the objects made at start while it runs, and every process of the
    server runs one.
    """

    def setUp(self) -> None:
        before = sys.getswitchinterval()
        self.addCleanup(sys.setswitchinterval, before)
        self.addCleanup(gc.unfreeze)
        # A value that is neither the default nor the service's own, so
        # that putting it back is seen.
        sys.setswitchinterval(0.0123)

    def test_switchInterval(self) -> None:
        """
        Started, the interval is the service's; stopped, it is the one
        before.
        """
        tuning = InterpreterService()
        tuning.startService()
        self.assertAlmostEqual(sys.getswitchinterval(), InterpreterService.interval)
        self.assertLess(InterpreterService.interval, 0.005)
        tuning.stopService()
        self.assertAlmostEqual(sys.getswitchinterval(), 0.0123)

    def test_freeze(self) -> None:
        """
        Started, the objects there were are frozen, out of the garbage
        collector's generations; stopped, they are back in them.
        """
        self.assertEqual(gc.get_freeze_count(), 0)
        kept = [object()]

        def collected() -> bool:
            return any(o is kept for o in gc.get_objects())

        self.assertTrue(collected())
        tuning = InterpreterService()
        tuning.startService()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertFalse(collected())
        tuning.stopService()
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertTrue(collected())

    def _tuningIn(self, top: object) -> bool:
        return any(isinstance(child, InterpreterService) for child in top)  # type: ignore[attr-defined]

    def test_everyProcess(self) -> None:
        """
        The main process's services and a worker's both hold one.
        """
        config = Config(dataDir=os.path.abspath(self.mktemp()), store="memory", listeners={})
        server = Server(config)
        self.assertTrue(self._tuningIn(server.service()))
        self.assertTrue(self._tuningIn(server.workerService({})))
