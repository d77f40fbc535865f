"""Inside the sandbox: forward 127.0.0.1:PORT to the egress proxy's unix socket, then exec.

    python3 -S -I bridge.py SOCKET PORT -- AGENT_ARGV...

It binds and listens first, so the agent can never find the port closed; then a detached
grandchild serves the port while this process becomes the agent. The forwarder runs as the
agent's uid: killing or replacing it only cuts the agent off, because the policy is enforced
by the proxy outside the sandbox. Standard library only: the sandbox's /usr/bin/python3 runs
it with no site-packages and without agentfarm. On the agent's path only builtin modules are
imported (``socket`` and ``threading`` cost about 10 ms): the forwarder imports the rest.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs; `signal` imports enum
import _socket
import os
import sys

TYPE_CHECKING = False  # not from typing: importing it costs about 7 ms here
if TYPE_CHECKING:
    import socket


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    try:  # noqa: SIM105 (contextlib would be one more import)
        dst.shutdown(_socket.SHUT_WR)
    except OSError:
        pass


def _serve(fd: int, path: str) -> None:
    import socket
    import threading

    listener = socket.socket(fileno=fd)

    def serve_one(client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            upstream.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            continue
        threading.Thread(target=serve_one, args=(client,), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: bridge.py SOCKET PORT -- COMMAND...", file=sys.stderr)
        return 2
    path, port, command = argv[1], int(argv[2]), argv[4:]
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    pid = os.fork()
    if pid == 0:
        # Double fork: the forwarder is reparented to the namespace's init, so the agent has
        # no child it did not start; its standard streams are not the agent's.
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            _serve(listener.detach(), path)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    listener.close()
    # Python ignores these at start; the agent must get the default behaviour back.
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)
    try:
        os.execv(command[0], command)  # noqa: S606 (the agent, as given)
    except OSError as exc:
        print(f"bridge.py: cannot start {command[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
