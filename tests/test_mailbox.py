"""
L{mailplat.mailbox}: the value types and rules every store shares.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailplat.mailbox import MessageInfo, SharedInfos


class SharedInfosTests(SynchronousTestCase):
    """
    L{SharedInfos} hands out one info per message version.
    """

    def test_sameVersion(self) -> None:
        """
        An info kept at a version is handed out again for that version
        only.
        """
        shared = SharedInfos()
        info = shared.keep(("v", 1), MessageInfo(7, frozenset(["\\Seen"]), 1.0, 10, 3))
        self.assertIs(shared.get(7, ("v", 1)), info)
        self.assertIsNone(shared.get(7, ("v", 2)))
        self.assertIsNone(shared.get(8, ("v", 1)))

    def test_flagSetsShared(self) -> None:
        """
        Equal flag sets of different messages become one object, and the
        info keeps its values.
        """
        shared = SharedInfos()
        a = shared.keep(1, MessageInfo(1, frozenset(["\\Seen", "$Work"]), 1.0, 10, 3))
        b = shared.keep(2, MessageInfo(2, frozenset(["$Work", "\\Seen"]), 2.0, 20, 4))
        self.assertIs(a.flags, b.flags)
        self.assertEqual((b.uid, b.flags, b.internalDate, b.size, b.modseq),
                         (2, frozenset(["\\Seen", "$Work"]), 2.0, 20, 4))

    def test_flagSetsBounded(self) -> None:
        """
        The table of flag sets does not grow past C{MAX_FLAG_SETS}.
        """
        shared = SharedInfos()
        shared.MAX_FLAG_SETS = 4
        for uid in range(1, 20):
            shared.keep(uid, MessageInfo(uid, frozenset([f"k{uid}"]), 1.0, 1, 1))
        self.assertLessEqual(len(shared._flagSets), 4)

    def test_listedForgets(self) -> None:
        """
        A whole listing forgets the messages no longer in it (expunged).
        """
        shared = SharedInfos()
        infos = [shared.keep(u, MessageInfo(u, frozenset(), 1.0, 1, 1)) for u in (1, 2, 3)]
        shared.listed([infos[0], infos[2]])
        self.assertIsNone(shared.get(2, 2))
        self.assertIs(shared.get(3, 3), infos[2])


class MessageInfoTests(SynchronousTestCase):
    """
    L{MessageInfo} holds a message's metadata; its internal date may be
    found at the first read.
    """

    def test_givenDate(self) -> None:
        """
        An info made with its date answers it, and compares by value.
        """
        info = MessageInfo(3, frozenset(["\\Seen"]), 5.0, 10, 2)
        self.assertEqual((info.uid, info.flags, info.internalDate, info.size, info.modseq),
                         (3, frozenset(["\\Seen"]), 5.0, 10, 2))
        self.assertEqual(info, MessageInfo(3, frozenset(["\\Seen"]), 5.0, 10, 2))
        self.assertNotEqual(info, MessageInfo(3, frozenset(["\\Seen"]), 6.0, 10, 2))
        self.assertEqual(hash(info), hash(MessageInfo(3, frozenset(["\\Seen"]), 5.0, 10, 2)))
        self.assertEqual(MessageInfo(1, frozenset(), 0.0, 1).modseq, 1)
        self.assertEqual(MessageInfo(uid=1, flags=frozenset(), internalDate=2.0, size=1, modseq=4).internalDate, 2.0)

    def test_lazyDate(self) -> None:
        """
        Without a date, C{dateOf} is asked at the first read of
        C{internalDate}, once, and with the info; L{MessageInfo.withFlags}
        keeps it unasked.
        """
        asked = []

        def dateOf(info: MessageInfo) -> float:
            asked.append(info.uid)
            return 1234.5

        info = MessageInfo(9, frozenset(), None, 10, 4, dateOf)
        other = info.withFlags(frozenset(["\\Seen"]), 5)
        self.assertEqual(asked, [])
        self.assertEqual(info.internalDate, 1234.5)
        self.assertEqual(info.internalDate, 1234.5)
        self.assertEqual(asked, [9])
        self.assertEqual((other.flags, other.modseq, other.size), (frozenset(["\\Seen"]), 5, 10))
        self.assertEqual(asked, [9])
        self.assertEqual(other.internalDate, 1234.5)
        self.assertEqual(asked, [9, 9])

    def test_dateNeeded(self) -> None:
        """
        An info with neither a date nor a way to find it is refused.
        """
        self.assertRaises(TypeError, MessageInfo, 1, frozenset(), None, 1)

    def test_sharedKeepsLazyDate(self) -> None:
        """
        L{SharedInfos.keep} sharing a flag set does not read the date.
        """
        asked = []
        shared = SharedInfos()
        shared.keep(1, MessageInfo(1, frozenset(["\\Seen"]), 1.0, 1, 1))
        info = shared.keep(2, MessageInfo(2, frozenset(["\\Seen"]), None, 1, 1, lambda i: asked.append(i) or 7.0))
        self.assertEqual(asked, [])
        self.assertEqual(info.internalDate, 7.0)
