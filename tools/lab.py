"""Open JupyterLab on the series (``make lab``), as root or not, with or without a screen.

JupyterLab refuses to run as root unless told ``--allow-root``; containers, cloud machines and many
classroom images run everything as root, so we pass it when the effective user is root. On a
machine with no screen (no DISPLAY or WAYLAND_DISPLAY on Linux) no browser can be opened, so we do
not try, and we say plainly which address to open instead of leaving it in the server's log.

    python tools/lab.py [--port N] [--no-browser] [notebooks folder]

The address carries a token we choose here, so it is known before the server starts.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys


def free_port(preferred: int = 8888) -> int:
    """``preferred`` if nothing listens there on 127.0.0.1, else a free port the system picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def has_screen() -> bool:
    """Whether a browser window could open: always on macOS and Windows, on Linux only with a display."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def lab_command(folder: str, port: int, token: str, open_browser: bool, as_root: bool) -> list[str]:
    """The ``jupyter lab`` command line (as a list) that serves ``folder`` on 127.0.0.1:``port``."""
    cmd = [sys.executable, "-m", "jupyterlab", folder, "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    if not open_browser:
        cmd.append("--no-browser")
    if as_root:
        cmd.append("--allow-root")
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", default="notebooks")
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: 8888, or a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not try to open a browser")
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        p.error(f"folder={args.folder!r} does not exist (run `make lab` from the repository root)")
    if args.port is not None and not 1 <= args.port <= 65535:
        p.error(f"--port={args.port} must be between 1 and 65535")
    port = args.port or free_port()
    token = secrets.token_hex(16)
    open_browser = has_screen() and not args.no_browser
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    url = f"http://127.0.0.1:{port}/lab?token={token}"
    print("\n  JupyterLab is starting on the series" + (" (as root: --allow-root)" if as_root else "") + ".")
    if open_browser:
        print(f"  A browser tab should open; if none does, open this address:\n\n    {url}\n")
    else:
        print(f"  No screen here, so no browser is opened. Open this address in a browser:\n\n    {url}\n")
    print("  Press Ctrl+C twice to stop it.\n", flush=True)
    cmd = lab_command(args.folder, port, token, open_browser, as_root)
    os.execv(cmd[0], cmd)  # JupyterLab takes over this process, so Ctrl+C reaches it directly


if __name__ == "__main__":
    raise SystemExit(main())
