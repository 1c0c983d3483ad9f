"""Offline guard: refuse every network connection that leaves this machine (loopback stays allowed).

Python imports ``sitecustomize`` at start-up from any folder on ``PYTHONPATH``, so putting this
folder there guards the process and every Python process it starts: pytest, its xdist workers,
JupyterLab and each notebook kernel (kernels talk to their client over loopback ZMQ, which stays
allowed). Each refused attempt is appended to the file named by ``GQA_NETWORK_LOG`` when it is set,
so a library that catches the error and carries on is still caught.

Used by ``make notebook-tests`` (the series runs offline), the browser tests and tests/test_offline.py.
"""

import errno
import ipaddress
import os
import socket

_LOG = os.environ.get("GQA_NETWORK_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_loopback_host(host) -> bool:
    if host is None or host == "":
        return True  # binding / resolving the wildcard address stays on this machine
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).split("%", 1)[0]  # drop an IPv6 zone id
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS


def _is_local_address(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    if isinstance(address, tuple) and address:
        return _is_loopback_host(address[0])
    return False


def _record(what: str, target) -> str:
    """Log the attempt (if asked) and return the message the refusal carries."""
    if _LOG:
        try:
            with open(_LOG, "a", encoding="utf-8") as fh:
                fh.write(f"pid {os.getpid()}: {what} {target!r}\n")
        except OSError:
            pass
    return f"offline guard: {what} {target!r} refused (only loopback is allowed)"


def _refuse(what: str, target) -> OSError:
    return OSError(errno.ENETUNREACH, _record(what, target))


def _install() -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if self.family != getattr(socket, "AF_UNIX", None) and not _is_local_address(address):
            raise _refuse("connect to", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family != getattr(socket, "AF_UNIX", None) and not _is_local_address(address):
            _record("connect to", address)
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if self.family != getattr(socket, "AF_UNIX", None) and not _is_local_address(address):
            raise _refuse("send to", address)
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback_host(host):
            raise socket.gaierror(socket.EAI_NONAME, _record("name lookup of", host))
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto
    socket.getaddrinfo = getaddrinfo
    socket.GQA_OFFLINE_GUARD = True


_install()
