"""Ports for a stack of its own: free, distinct, and not where outgoing connections take theirs."""

from __future__ import annotations

from neuronova.stack.ports import _ephemeral_range, free_ports, port_free


def test_free_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = free_ports(12)

    assert len(set(ports)) == 12
    assert all(port_free("127.0.0.1", p) for p in ports)
    ephemeral = _ephemeral_range()
    assert not any(p in ephemeral for p in ports)
