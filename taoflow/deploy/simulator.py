"""A simulated Jetson Nano for the demo: a real OpenSSH sshd on 127.0.0.1 whose device root is in the workspace.

Deploying to it exercises the whole path a real device sees (SSH with host-key verification, checksummed uploads,
the device agent's build/smoke/activate, the `current` switch); only the runtime differs (ONNX Runtime on the host's
Python instead of TensorRT). Its host key is generated here, so the inventory it writes trusts exactly that key.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import TaoflowError

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
SetEnv SHLVL=1
"""


def _tool(name):
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise TaoflowError(f"the simulated device needs OpenSSH's {name}: install it (Debian/Ubuntu: "
                           "apt-get install openssh-server openssh-client)")
    return path


def _keygen(path):
    if not Path(path).exists():
        subprocess.run([_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimulatedNano:
    def __init__(self, workspace, name="sim-nano-01"):
        self.name = name
        self.dir = Path(workspace).resolve() / "sim-devices" / name
        self.root = self.dir / "root"
        self.proc = None
        self.port = None

    def start(self):
        sshd = _tool("sshd")
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = " ".join(_keygen(self.dir / "host_ed25519").split()[:2])
        client_pub = _keygen(self.dir / "client_ed25519")
        (self.dir / "authorized_keys").write_text(client_pub + "\n")
        os.chmod(self.dir / "authorized_keys", 0o600)
        (self.dir / "sshd_config").write_text(SSHD_CONFIG.format(dir=self.dir))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self.port = _free_port()
        log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.dir / "sshd_config"), "-p", str(self.port)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0"):
                        return self._inventory(host_key)
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TaoflowError(f"the simulated device's sshd did not start: {(self.dir / 'sshd.log').read_text()[-500:]}")

    def _inventory(self, host_key):
        inventory = self.dir.parent / "fleet.toml"
        inventory.write_text(
            "# The demo's simulated device (taoflow/deploy/simulator.py); its host key was generated here.\n"
            "[defaults]\n"
            f'user = "{_user()}"\n'
            f'key = "{self.dir / "client_ed25519"}"\n'
            f'python = "{sys.executable}"\n\n'
            "[[devices]]\n"
            f'name = "{self.name}"\n'
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f'device_root = "{self.root}"\n'
            f'host_key = "{host_key}"\n'
            'tags = ["demo", "canary"]\n')
        return inventory

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _user():
    import getpass
    return getpass.getuser()
