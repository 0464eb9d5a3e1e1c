"""TCPStores that listen on one address, not on every interface.

A job's processes meet through TCPStores: torchrun's rendezvous, and the
store from which the ranks build their process group. PyTorch's store server
listens on every interface (`::`) whatever host name it is given, and takes
no password, so anyone who reaches the machine could write into a job's
rendezvous. A store can instead be handed a socket that is already bound
(`master_listen_fd`): that socket is bound here, to 127.0.0.1 for a job on
one machine, or to the address the user named for the rendezvous of a job
over several hosts.
"""

from __future__ import annotations

import datetime
import socket

import torch.distributed as dist


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host` (a name or an address) and `port` (0: a free one), listening."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    server = socket.socket(family, kind, protocol)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(address)
    server.listen()
    return server


def bound_store(
    host: str,
    port: int,
    world_size: int | None = None,
    timeout: datetime.timedelta = datetime.timedelta(minutes=30),
) -> dist.TCPStore:
    """The server of a TCPStore, listening on `host` only; its port is the store's `.port`.

    `multi_tenant`: a store made later in this process on the same port (as
    torchrun's rendezvous makes its own) shares this one's server instead of
    binding a second.
    """
    server = listening_socket(host, port)
    bound_port = server.getsockname()[1]
    return dist.TCPStore(
        host,
        bound_port,
        world_size,
        is_master=True,
        timeout=timeout,
        wait_for_workers=False,
        multi_tenant=True,
        master_listen_fd=server.detach(),  # the store owns the socket from here on
    )


def client_store(host: str, port: int, world_size: int, timeout: datetime.timedelta) -> dist.TCPStore:
    """A client of the store at host:port; it waits (up to `timeout`) for the server to be there."""
    return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
