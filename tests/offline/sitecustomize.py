"""Block the network, loopback excepted, in every Python process the tests start.

`make test` puts this folder first on PYTHONPATH, so Python imports this module at
start-up in the pytest process and in everything it launches: the nbval kernels, the
`torchrun` workers, the JupyterLab server of the browser test and its kernels. A
connection to any host but this machine's loopback (127.0.0.0/8, ::1, Unix sockets),
and a name lookup of any name but `localhost` or this machine's own, raise
`NetworkBlockedError` (an `OSError`, so libraries treat it as "offline") with a
message that says where the block comes from.

Only the Python `socket` module is guarded; code in C that opens its own sockets
(ZeroMQ, gloo) is not, and it talks over loopback here anyway.
"""

import importlib.machinery
import importlib.util
import ipaddress
import socket
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkBlockedError(ConnectionRefusedError):
    """A connection or lookup that would leave the machine, refused by the tests."""


def _is_loopback(host: object) -> bool:
    if host is None or not isinstance(host, str | bytes):
        return True  # Unix socket paths and the like
    host = host.decode() if isinstance(host, bytes) else host
    host = host.split("%")[0].strip("[]").lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback or (mapped or address).is_unspecified


def _refuse(what: str, host: object) -> NetworkBlockedError:
    return NetworkBlockedError(
        f"network blocked by the course's tests: {what} {host!r} refused, only "
        f"loopback is allowed ({_HERE / 'sitecustomize.py'}); the course must run "
        "offline, so load models and data from the installed packages and the cache"
    )


def _guard_address(sock: socket.socket, address: object, what: str) -> None:
    if sock.family == getattr(socket, "AF_UNIX", None):
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if not _is_loopback(host):
        raise _refuse(what, host)


def _install() -> None:
    cls = socket.socket
    if getattr(cls, "_llm_course_offline", False):
        return
    connect, connect_ex, sendto = cls.connect, cls.connect_ex, cls.sendto
    getaddrinfo, gethostbyname = socket.getaddrinfo, socket.gethostbyname
    own_names = {socket.gethostname().lower()}

    def guarded_connect(self, address):
        _guard_address(self, address, "connection to")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _guard_address(self, address, "connection to")
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        _guard_address(self, args[-1], "datagram to")
        return sendto(self, data, *args)

    def _check_name(host) -> None:
        name = host.decode() if isinstance(host, bytes) else host
        if not (_is_loopback(name) or str(name).lower() in own_names):
            try:
                ipaddress.ip_address(str(name).split("%")[0].strip("[]"))
            except ValueError:
                raise _refuse("name lookup of", host) from None
            raise _refuse("connection to", host)

    def guarded_getaddrinfo(host, *args, **kwargs):
        _check_name(host)
        return getaddrinfo(host, *args, **kwargs)

    def guarded_gethostbyname(host):
        _check_name(host)
        return gethostbyname(host)

    cls.connect, cls.connect_ex, cls.sendto = (
        guarded_connect,
        guarded_connect_ex,
        guarded_sendto,
    )
    socket.getaddrinfo, socket.gethostbyname = (
        guarded_getaddrinfo,
        guarded_gethostbyname,
    )
    cls._llm_course_offline = True
    socket.NetworkBlockedError = NetworkBlockedError


def _chain_next_sitecustomize() -> None:
    """Run the sitecustomize that this one hides, if the interpreter has one."""
    others = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_install()
_chain_next_sitecustomize()
