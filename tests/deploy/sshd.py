"""Simulated devices: one real OpenSSH sshd per device on 127.0.0.1, each with its own host key and device root.

sshd runs in the foreground (-D -e) with a private config, so it needs no system configuration; it accepts only
the test's client key, through internal-sftp. Killing a device kills its listener and its per-connection sshd
processes (all descendants of the listener we started), not the commands they ran: like a real sshd crash, an
agent already running carries on as an orphan.

`SetEnv SHLVL=1` keeps bash from sourcing ~/.bashrc for every remote command (bash does so for a top-level shell
started by sshd). This test machine's root .bashrc runs `pyenv init`, ~0.3 s per command; a Jetson's stock
Ubuntu .bashrc returns at once for non-interactive shells, which is what the simulated devices now match.
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

CONFIG = """\
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
MaxStartups 200
MaxSessions 50
LogLevel ERROR
SetEnv SHLVL=1
"""


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return Path(str(path) + ".pub").read_text().strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def descendants(pid):
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class SimDevice:
    def __init__(self, name, base, client_pub):
        self.name = name
        self.dir = Path(base) / name
        self.root = self.dir / "root"
        self.root.mkdir(parents=True)
        self.host_key = " ".join(keygen(self.dir / "host_ed25519").split()[:2])
        (self.dir / "authorized_keys").write_text(client_pub + "\n")
        os.chmod(self.dir / "authorized_keys", 0o600)
        (self.dir / "sshd_config").write_text(CONFIG.format(dir=self.dir))
        self.port = None
        self.proc = None

    def start(self, port=None):
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation dir sshd insists on
        for _ in range(5):
            self.port = port or free_port()
            log = open(self.dir / "sshd.log", "ab")
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config"), "-p",
                                          str(self.port)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            log.close()
            if self._wait_ready():
                return self
            self.stop()
            if port:
                break
        raise RuntimeError(f"sshd for {self.name} did not start: {(self.dir / 'sshd.log').read_text()[-800:]}")

    def _wait_ready(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def kill_sessions(self):
        """Kill every sshd process under the listener: open connections drop, their commands live on."""
        for pid in descendants(self.proc.pid):
            if _comm(pid).startswith("sshd"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def kill(self):
        """The device's sshd dies: listener and sessions; nothing accepts connections until start()."""
        self.kill_sessions()
        self.stop()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def inventory_table(self, python, tags=(), trusted=True):
        lines = ["[[devices]]", f'name = "{self.name}"', 'host = "127.0.0.1"', f"port = {self.port}",
                 f'device_root = "{self.root}"', f'python = "{python}"', f"tags = {list(tags)!r}".replace("'", '"')]
        if trusted:
            lines.append(f'host_key = "{self.host_key}"')
        return "\n".join(lines) + "\n"


class SimFleet:
    """N simulated devices sharing one client key; writes fleet.toml for them."""

    def __init__(self, base, client_key):
        self.base = Path(base)
        self.client_key = Path(client_key)
        self.client_pub = Path(str(client_key) + ".pub").read_text().strip()
        self.devices = []

    def add(self, name):
        device = SimDevice(name, self.base, self.client_pub).start()
        self.devices.append(device)
        return device

    def write_inventory(self, pythons, tags=None, untrusted=(), command_timeout=120, extra_defaults=""):
        """`pythons`: one device Python per device (or a single one for all)."""
        if isinstance(pythons, (str, Path)):
            pythons = [pythons] * len(self.devices)
        text = (f'[defaults]\nuser = "{getpass.getuser()}"\nkey = "{self.client_key}"\nconnect_timeout = 5\n'
                f"command_timeout = {command_timeout}\nbuild_timeout = 120\nconcurrency = 8\n{extra_defaults}\n")
        for i, (device, python) in enumerate(zip(self.devices, pythons)):
            text += "\n" + device.inventory_table(python, (tags or {}).get(device.name, [f"group{i % 2}"]),
                                                  trusted=device.name not in untrusted)
        path = self.base / "fleet.toml"
        path.write_text(text)
        return path

    def stop(self):
        for device in self.devices:
            device.kill()
