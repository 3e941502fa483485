"""The elastic controller's TCP hub: who gets in, and messages both ways."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gpuslice.parsl.hub import Hub, HubAddress, HubClient, HubError, NodeLink


class Recorder:
    """A hub whose callbacks put what they see on a queue."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, NodeLink, dict[str, Any] | None]] = queue.Queue()
        self.hub = Hub(
            "g1",
            on_hello=lambda link: self.events.put(("hello", link, link.hello)),
            on_message=lambda link, m: self.events.put(("message", link, m)),
            on_closed=lambda link: self.events.put(("closed", link, None)),
            bind="127.0.0.1",
        )

    def next(self, timeout: float = 5.0) -> tuple[str, NodeLink, dict[str, Any] | None]:
        return self.events.get(timeout=timeout)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    made = Recorder()
    made.hub.start(["127.0.0.1"])
    try:
        yield made
    finally:
        made.hub.stop()


def test_a_node_with_the_token_is_welcomed_and_messages_flow_both_ways(
    recorder: Recorder,
) -> None:
    address = recorder.hub.address
    assert address is not None
    client = HubClient.connect(address, {"node": "n-a", "devices": []})
    try:
        kind, link, hello = recorder.next()
        assert kind == "hello"
        assert hello == {"op": "hello", "node": "n-a", "devices": []}  # the token is not kept
        assert link.node_id == client.node_id == "n0"
        assert client.send({"op": "started", "slice": "s1"})
        kind, _, message = recorder.next()
        assert (kind, message) == ("message", {"op": "started", "slice": "s1"})
        assert link.send({"op": "stop", "slice": "s1"})
        assert client.receive(5.0) == [{"op": "stop", "slice": "s1"}]
    finally:
        client.close()
    kind, _, _ = recorder.next()
    assert kind == "closed"


def test_a_wrong_token_is_turned_away_without_reaching_the_controller(
    recorder: Recorder,
) -> None:
    address = recorder.hub.address
    assert address is not None
    forged = HubAddress(address.addresses, address.port, "0" * 32, address.group)
    with pytest.raises(HubError, match=r"cannot reach the elastic controller .*127\.0\.0\.1"):
        HubClient.connect(forged, {"node": "intruder"})
    with pytest.raises(queue.Empty):
        recorder.next(timeout=0.5)


def test_a_server_that_is_not_the_hub_is_skipped_for_the_next_address(
    recorder: Recorder,
) -> None:
    # Something else listens on the hub's port at the first address tried (as a node's own
    # loopback might): it answers, but not with this configuration's welcome.
    address = recorder.hub.address
    assert address is not None
    stray = socket.socket()
    stray.bind(("127.0.0.2", address.port))  # the hub listens on 127.0.0.1 only
    stray.listen(1)

    def answer() -> None:
        conn, _ = stray.accept()
        conn.recv(4096)
        conn.sendall(b'{"op": "welcome", "node_id": "x", "group": "someone-else"}\n')
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    both = HubAddress(("127.0.0.2", "127.0.0.1"), address.port, address.token, address.group)
    try:
        client = HubClient.connect(both, {"node": "n-b"})
    finally:
        stray.close()
    try:
        assert client.address == f"127.0.0.1:{address.port}"
        assert recorder.next()[0] == "hello"
    finally:
        client.close()


def test_a_node_sees_its_hub_go_away(recorder: Recorder) -> None:
    address = recorder.hub.address
    assert address is not None
    client = HubClient.connect(address, {"node": "n-c"})
    recorder.next()
    recorder.hub.stop()
    assert client.receive(5.0) == []
    assert not client.connected
    assert not client.send({"op": "started"})


def test_nothing_listening_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(HubError, match=rf"127\.0\.0\.1:{free}: .*nodes must be able to open"):
        HubClient.connect(HubAddress(("127.0.0.1",), free, "t", "g"), {})
