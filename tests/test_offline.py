"""The offline guarantee: nothing the tests start can reach beyond loopback.

`make test` puts `tests/offline/` on PYTHONPATH, so its `sitecustomize.py` guards the
sockets of the pytest process and of every Python process it starts (nbval kernels,
torchrun workers, the browser test's JupyterLab); pytest-socket guards the tests
themselves (`addopts` in pyproject.toml).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUARD = ROOT / "tests" / "offline"
REFUSAL = "network blocked by the course's tests"
PROBE = """
import socket
for what, call in [
    ("ip", lambda: socket.create_connection(("1.1.1.1", 80), timeout=3)),
    ("name", lambda: socket.getaddrinfo("example.com", 443)),
    ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
        b"x", ("8.8.8.8", 53))),
]:
    try:
        call()
        print(what, "CONNECTED")
    except OSError as err:
        print(what, type(err).__name__, err)
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname(), timeout=3)
print("loopback ok" if client.getpeername() else "loopback failed")
"""


def _guarded_env() -> dict[str, str]:
    paths = [str(GUARD), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_subprocess_gets_the_clear_refusal_and_keeps_loopback():
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=_guarded_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for what in ("ip", "name", "udp"):
        assert lines[what].startswith("NetworkBlockedError"), result.stdout
        assert REFUSAL in lines[what], lines[what]
    assert "'example.com'" in lines["name"] and "1.1.1.1" in lines["ip"]
    assert lines["loopback"] == "ok", result.stdout + result.stderr


def test_pytest_process_refuses_remote():
    refused = "(?i)blocked|tried to use socket"  # the guard's or pytest-socket's words
    with pytest.raises((OSError, RuntimeError), match=refused):
        socket.create_connection(("1.1.1.1", 80), timeout=3)


def test_make_test_runs_under_the_guard():
    makefile = (ROOT / "Makefile").read_text()
    assert 'PYTHONPATH="$(CURDIR)/tests/offline' in makefile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "--allow-hosts=127.0.0.1" in pyproject


def test_kernel_gets_the_clear_refusal():
    """A notebook kernel started as nbval starts it inherits the guard."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(
        kernel_name="python3", env=_guarded_env(), startup_timeout=120
    )
    outputs = []

    def keep(message):
        if message["msg_type"] == "stream":
            outputs.append(message["content"]["text"])

    try:
        code = "import urllib.request\ntry:\n    urllib.request.urlopen("
        code += "'http://example.com', timeout=3)\nexcept OSError as e:\n    print(e)"
        client.execute_interactive(code, output_hook=keep, timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert REFUSAL in "".join(outputs) and "example.com" in "".join(outputs)
