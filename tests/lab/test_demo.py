"""The lab demo's arithmetic (the demo itself runs in `make lab`)."""

from __future__ import annotations

import pytest

from dmvpn.lab.demo import first_sent_at


def test_the_first_pings_send_time_comes_from_any_reply() -> None:
    # Reply to icmp_seq 1 stamped at 100.050 s after a 50 ms round trip: sent at 100.000.
    assert first_sent_at(100.050, 50.0, 1, 0.02) == pytest.approx(100.000)
    # Only icmp_seq 4 came back (stamped 100.110, 50 ms): it left 3 intervals after the first.
    assert first_sent_at(100.110, 50.0, 4, 0.02) == pytest.approx(100.000)
