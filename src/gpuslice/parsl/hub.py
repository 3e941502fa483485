"""The elastic controller's channel to every node: a small TCP hub in the submitting process.

In elastic mode (``parsl_config(..., elastic=ElasticPolicy(...))``) every ``gpuslice node-run``
connects back to a :class:`Hub` that the submitting process runs, as Parsl's managers connect
back to their interchange: nodes need only an outgoing TCP connection to the submitting host,
no shared file system. The hub's addresses, port and a random token travel in the node spec
that :class:`~gpuslice.parsl.group.NodeGroup` puts into each node's command.

Protocol: one JSON object per line (UTF-8, at most :data:`MAX_LINE` bytes), both ways.

- The node opens with ``{"op": "hello", "token": …, "group": …, …}``; the hub answers
  ``{"op": "welcome", "node_id": …, "group": …}`` when the token is the configuration's, or
  closes the connection. The node checks the group in the welcome, so a stray server on one of
  the addresses tried is never mistaken for the hub.
- Afterwards the node reports (``started``, ``exited``, ``refused``) and the controller
  commands (``start``, ``stop``); :mod:`gpuslice.parsl.elastic` and
  :mod:`gpuslice.parsl.elastic_node` define them.

The token keeps strangers from posing as nodes; the channel is not encrypted (nothing secret
crosses it: slice ids, device UUIDs and exit codes). The token is on node-run's command line,
where local users of a node can read it; a node that trusts no local user should run the
configuration without ``elastic``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import queue
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gpuslice.errors import GpusliceError

__all__ = [
    "HELLO_TIMEOUT_S",
    "MAX_LINE",
    "Hub",
    "HubAddress",
    "HubClient",
    "HubError",
    "NodeLink",
    "hub_addresses",
]

#: Longest message line either side accepts, in bytes.
MAX_LINE = 1 << 20
#: Seconds a new connection has to say hello (and a node to be welcomed) before it is dropped.
HELLO_TIMEOUT_S = 10.0
#: Seconds a node tries one address before it tries the next.
CONNECT_TIMEOUT_S = 3.0

Message = dict[str, Any]


class HubError(GpusliceError):
    """A node could not reach the elastic controller's hub, or the hub refused it."""


@dataclass(frozen=True)
class HubAddress:
    """Where nodes find the hub, and what proves they belong to this configuration.

    Attributes:
        addresses: the submitting host's addresses, tried in order.
        port: the hub's TCP port.
        token: the configuration's secret (hex).
        group: the node group id, echoed in the hub's welcome.
    """

    addresses: tuple[str, ...]
    port: int
    token: str
    group: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for the node spec)."""
        return {
            "addresses": list(self.addresses),
            "port": self.port,
            "token": self.token,
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HubAddress:
        """Read :meth:`to_dict`'s form back."""
        return cls(
            addresses=tuple(str(a) for a in data["addresses"]),
            port=int(data["port"]),
            token=str(data["token"]),
            group=str(data["group"]),
        )


def hub_addresses() -> tuple[str, ...]:
    """The submitting host's addresses, loopback last (Parsl's own list of this host's addresses).

    A node on this host reaches any of them; a node elsewhere needs a routable one, and a
    loopback address there would reach that node itself (the welcome check catches it).
    """
    from parsl.addresses import get_all_addresses

    found = sorted(get_all_addresses())
    loopback = [a for a in found if a.startswith("127.") or a == "::1"]
    return tuple([a for a in found if a not in loopback] + (loopback or ["127.0.0.1"]))


def _encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class _LineReader:
    """Newline-delimited JSON from a socket, refusing over-long lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self) -> Message | None:
        """The next message, or None when the peer closed the connection.

        Raises:
            HubError: a line that is too long or not a JSON object.
            OSError: the socket failed (or timed out).
        """
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise HubError(f"a message longer than {MAX_LINE} bytes")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError as err:
            raise HubError(f"a message that is not JSON: {err}") from err
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise HubError("a message without an 'op'")
        return message


class NodeLink:
    """The hub's end of one node's connection.

    Attributes:
        node_id: the id the hub gave the node (``n0``, ``n1``, …).
        hello: the node's hello message.
        peer: the node's address as the hub sees it.
    """

    def __init__(self, sock: socket.socket, node_id: str, hello: Message, peer: str) -> None:
        self.sock = sock
        self.node_id = node_id
        self.hello = hello
        self.peer = peer
        self._lock = threading.Lock()
        self.closed = False

    def send(self, message: Message) -> bool:
        """Send one message; False when the connection is gone."""
        data = _encode(message)
        with self._lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True
                return False
        return True

    def close(self) -> None:
        """Close the connection (the node sees its hub go)."""
        with self._lock:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


class Hub:
    """A TCP server for the nodes of one configuration (see the module's description).

    Args:
        group: the node group id (echoed to nodes in the welcome).
        on_hello: called with a node's link once its hello is accepted (in the link's thread).
        on_message: called with the link and each later message.
        on_closed: called with the link when the node's connection ends.
        bind: the interface to listen on (default: all, so nodes elsewhere can connect).
    """

    def __init__(
        self,
        group: str,
        on_hello: Callable[[NodeLink], None],
        on_message: Callable[[NodeLink, Message], None],
        on_closed: Callable[[NodeLink], None],
        bind: str = "0.0.0.0",  # all interfaces: nodes on other hosts connect here
    ) -> None:
        self.group = group
        self.token = secrets.token_hex(16)
        self.on_hello = on_hello
        self.on_message = on_message
        self.on_closed = on_closed
        self.bind = bind
        self.links: list[NodeLink] = []
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._next_id = 0
        self._stopped = threading.Event()
        self.address: HubAddress | None = None

    def start(self, addresses: Sequence[str] | None = None) -> HubAddress:
        """Listen on a free port; returns what nodes need to connect (idempotent)."""
        if self.address is not None:
            return self.address
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.bind, 0))
        server.listen(64)
        self._server = server
        port = server.getsockname()[1]
        self.address = HubAddress(
            tuple(addresses) if addresses is not None else hub_addresses(),
            port,
            self.token,
            self.group,
        )
        accept = threading.Thread(target=self._accept, name="gpuslice-hub-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self.address

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopped.is_set():
            try:
                sock, peer = self._server.accept()
            except OSError:
                return
            thread = threading.Thread(
                target=self._serve, args=(sock, f"{peer[0]}:{peer[1]}"), daemon=True
            )
            thread.name = "gpuslice-hub-node"
            thread.start()
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)

    def _welcome(self, sock: socket.socket, reader: _LineReader, peer: str) -> NodeLink | None:
        sock.settimeout(HELLO_TIMEOUT_S)
        try:
            hello = reader.read()
        except (OSError, HubError):
            return None
        if hello is None or hello.get("op") != "hello":
            return None
        token = str(hello.get("token", ""))
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        with self._lock:
            node_id = f"n{self._next_id}"
            self._next_id += 1
        link = NodeLink(sock, node_id, {k: v for k, v in hello.items() if k != "token"}, peer)
        if not link.send({"op": "welcome", "node_id": node_id, "group": self.group}):
            return None
        sock.settimeout(None)
        return link

    def _serve(self, sock: socket.socket, peer: str) -> None:
        reader = _LineReader(sock)
        link = self._welcome(sock, reader, peer)
        if link is None:
            with contextlib.suppress(OSError):
                sock.close()
            return
        with self._lock:
            self.links.append(link)
        try:
            self.on_hello(link)
            while not self._stopped.is_set():
                try:
                    message = reader.read()
                except (OSError, HubError):
                    break
                if message is None:
                    break
                self.on_message(link, message)
        finally:
            link.close()
            with self._lock:
                if link in self.links:
                    self.links.remove(link)
            if not self._stopped.is_set():
                self.on_closed(link)

    def stop(self) -> None:
        """Stop listening and close every node's connection."""
        self._stopped.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            links = list(self.links)
        for link in links:
            link.close()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=5)


class HubClient:
    """A node's end of the channel: connect, say hello, then exchange messages.

    Messages from the hub are read by a thread into a queue (:meth:`receive`); :meth:`send`
    writes from the caller's thread.
    """

    def __init__(self, sock: socket.socket, welcome: Message, address: str) -> None:
        self.sock = sock
        self.node_id = str(welcome["node_id"])
        self.address = address
        self.inbox: queue.Queue[Message | None] = queue.Queue()
        self.connected = True
        self._lock = threading.Lock()
        self._reader = _LineReader(sock)
        self._thread = threading.Thread(target=self._read, name="gpuslice-hub-client", daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls, hub: HubAddress, hello: Message) -> HubClient:
        """Reach the hub at the first of its addresses that welcomes this node.

        Args:
            hub: the hub's addresses, port, token and group.
            hello: what the node tells the controller (the token and group are added).

        Raises:
            HubError: no address answered with this configuration's welcome; the message
                lists each address tried and what happened.
        """
        tried: list[str] = []
        for host in hub.addresses:
            where = f"{host}:{hub.port}"
            try:
                sock = socket.create_connection((host, hub.port), timeout=CONNECT_TIMEOUT_S)
            except OSError as err:
                tried.append(f"{where}: {err.strerror or err}")
                continue
            try:
                sock.settimeout(HELLO_TIMEOUT_S)
                sock.sendall(_encode({**hello, "op": "hello", "token": hub.token}))
                welcome = _LineReader(sock).read()
            except (OSError, HubError) as err:
                sock.close()
                tried.append(f"{where}: {err}")
                continue
            if (
                welcome is None
                or welcome.get("op") != "welcome"
                or welcome.get("group") != hub.group
            ):
                sock.close()
                tried.append(f"{where}: not this configuration's controller (no welcome)")
                continue
            sock.settimeout(None)
            return cls(sock, welcome, where)
        raise HubError(
            "cannot reach the elastic controller of this configuration ("
            + "; ".join(tried)
            + "): nodes must be able to open a TCP connection to the submitting host; "
            "check firewalls, or run without elastic="
        )

    def _read(self) -> None:
        try:
            while True:
                try:
                    message = self._reader.read()
                except (OSError, HubError):
                    break
                if message is None:
                    break
                self.inbox.put(message)
        finally:
            self.connected = False
            self.inbox.put(None)

    def send(self, message: Message) -> bool:
        """Send one message; False when the hub is gone."""
        with self._lock:
            if not self.connected:
                return False
            try:
                self.sock.sendall(_encode(message))
            except OSError:
                self.connected = False
                return False
        return True

    def receive(self, timeout: float) -> list[Message]:
        """Messages that arrived, waiting up to ``timeout`` seconds for the first one.

        Once the hub has gone, :attr:`connected` is False and this returns what was left.
        """
        found: list[Message] = []
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return found
        while item is not None:
            found.append(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return found
        self.connected = False
        return found

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.connected = False
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
