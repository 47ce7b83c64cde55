"""tests.support.free_port: ports for the servers the tests start."""

from __future__ import annotations

import socket

import pytest

from tests.support import free_port, listen_ports


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_bound():
    """Outbound connections take their local ports from the ephemeral range; a listener's port
    drawn there can be taken before the server binds it."""
    ports = listen_ports()
    for _ in range(50):
        port = free_port()
        if ports is not None:
            assert port in ports
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_drawn_again(monkeypatch):
    import tests.support as support

    if listen_ports() is None:
        pytest.skip("this system's ephemeral range leaves no room below it: free_port binds port 0")
    with socket.socket() as held:
        taken = free_port()
        held.bind(("127.0.0.1", taken))
        held.listen()
        other = free_port()
        draws = iter([taken, taken, other])

        class Scripted:
            def randrange(self, start, stop):
                return next(draws)

        monkeypatch.setattr(support.random, "SystemRandom", Scripted)
        assert free_port() == other
