"""The namespace plumbing under scripts/compose-check: a node sees its own /tmp and /run, and the
sources of its mounts wherever they lie (a checkout cloned under /tmp included)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import Lab, Mount


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root")
    home = Path(tempfile.mkdtemp(prefix="neuronova-netns-", dir="/var/tmp"))
    lab = Lab("nntest", home)
    try:
        yield lab
    finally:
        lab.close()


def test_a_source_under_tmp_is_mounted_before_the_node_gets_its_own_tmp(lab: Lab) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as source:
        (Path(source) / "file").write_text("from the host's /tmp\n")
        node = lab.add_node("one")
        lab.write_hosts(node, {})
        (node.home / "tmp" / "private").write_text("the node's own\n")
        mounts = [*lab.base_mounts(node), Mount(Path(source), "/mnt/neuronova-netns-test")]
        lab.prepare_mountpoints(mounts)
        result = lab.run(
            node,
            ["sh", "-c", "cat /mnt/neuronova-netns-test/file /tmp/private; ls /tmp"],
            env={"PATH": "/usr/bin:/bin"},
            mounts=mounts,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "from the host's /tmp",
        "the node's own",
        "private",
    ]


def test_nodes_on_a_network_reach_each_other_and_nothing_else(lab: Lab) -> None:
    network = lab.add_network("net", "10.232.1.0/24")
    first, second, alone = lab.add_node("a"), lab.add_node("b"), lab.add_node("c")
    lab.attach(first, network)
    lab.attach(second, network)
    ping = ["python3", "-c", "import socket, sys; socket.create_connection((sys.argv[1], 9), 1)"]
    for node in (first, second, alone):
        lab.write_hosts(node, {})
    reach = lab.run(first, [*ping, str(second.addresses["net"])], env={"PATH": "/usr/bin:/bin"},
                    mounts=lab.base_mounts(first))  # fmt: skip
    # Refused (nothing listens on 9): the address is there.
    assert "ConnectionRefusedError" in reach.stderr, reach.stderr
    away = lab.run(alone, [*ping, str(second.addresses["net"])], env={"PATH": "/usr/bin:/bin"},
                   mounts=lab.base_mounts(alone))  # fmt: skip
    assert "Network is unreachable" in away.stderr or "OSError" in away.stderr, away.stderr
