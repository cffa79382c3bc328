"""Simulated Jetson Nanos on 127.0.0.1: SSH servers whose device root is a local folder.

Deploying to one exercises the whole path a real device sees (SSH with host-key verification, checksummed and
resumable SFTP uploads, the device agent's probe/build/smoke/activate as remote commands, the `current` switch);
only the runtime differs (ONNX Runtime on a local Python instead of TensorRT). Two servers, one interface:

- `OpenSSHDevice`: the system's OpenSSH `sshd` (`/usr/sbin/sshd`), one foreground sshd per device with a private
  config. The closest thing to a Jetson here; needs the `openssh-server` package.
- `EmbeddedDevice`: an SSH server inside this process (asyncssh's server side: SFTP and exec), for machines with
  nothing but Python and pip. Each exec request runs its command as sshd does: `$SHELL -c COMMAND` in a new
  session (setsid), with a clean login environment (USER, LOGNAME, HOME, SHELL, PATH, SSH_CLIENT,
  SSH_CONNECTION; nothing of this process's environment, so no secret of the host leaks to the "device"), the
  device's home as its working directory, stdout and stderr passed back and the exit status (or the signal that
  killed it) returned. Signals the client sends over the channel are delivered to the command. A dropped
  connection closes the command's pipes and does not kill it (its reads see EOF, its writes fail), which is what
  sshd does for a command without a terminal: an agent that was running carries on as an orphan, as on a device.

Host and client keys are made with asyncssh (no `ssh-keygen` needed) and written in OpenSSH's format, which both
servers read; the inventory a simulated device writes trusts exactly its host key. Fault injection is the same on
both: `kill_sessions()` drops every open connection (commands live on), `kill()` takes the server down (nothing
accepts connections until `start(port=...)`).
"""

import asyncio
import getpass
import io
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import asyncssh

from ..errors import TaoflowError
from ..fsutil import sha256_file
from .ssh import UPLOAD_CHECKS, raise_open_file_limit

SERVER_KINDS = ("auto", "openssh", "embedded")

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
MaxStartups 200
MaxSessions 50
LogLevel ERROR
SetEnv SHLVL=1
"""
# `SetEnv SHLVL=1` keeps bash from sourcing ~/.bashrc for every remote command (bash does so for a top-level shell
# started by sshd); a Jetson's stock .bashrc returns at once for non-interactive shells, which this matches.


def find_sshd():
    """Path of OpenSSH's sshd, or None."""
    path = shutil.which("sshd")
    if path is None and os.access("/usr/sbin/sshd", os.X_OK):
        path = "/usr/sbin/sshd"
    return path


def resolve_server_kind(kind="auto"):
    """'openssh' or 'embedded' for a --device-server choice; 'auto' takes OpenSSH when it is installed."""
    if kind not in SERVER_KINDS:
        raise TaoflowError(f"device server {kind!r}: choose one of {', '.join(SERVER_KINDS)}")
    if kind == "auto":
        return "openssh" if find_sshd() else "embedded"
    if kind == "openssh" and find_sshd() is None:
        raise TaoflowError("--device-server openssh: OpenSSH's sshd is not installed (Debian/Ubuntu: apt-get install "
                           "openssh-server), or use --device-server embedded, which needs nothing installed")
    return kind


def keygen(path):
    """Write an ed25519 key pair (OpenSSH format, private file 0600) unless `path` exists; return the public line."""
    path = Path(path)
    pub = Path(f"{path}.pub")
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key("openssh"))
        pub.write_bytes(key.export_public_key("openssh"))
        tmp.replace(path)
    elif not pub.exists():
        pub.write_bytes(asyncssh.read_private_key(str(path)).export_public_key("openssh"))
    return pub.read_text().strip()


def key_line(public_line):
    """'type base64' of an OpenSSH public key line (the comment dropped), as an inventory's host_key."""
    return " ".join(public_line.split()[:2])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- OpenSSH ---------------------------------------------------------------------------------------------------

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
    """Every process below `pid` (Linux /proc)."""
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


class _Device:
    """What both servers share: a folder with keys, a device root and a home; the inventory table."""

    kind = None

    def __init__(self, name, base, client_pub):
        self.name = name
        self.dir = Path(base).resolve() / name
        self.root = self.dir / "root"
        self.home = self.dir / "home"
        for folder in (self.root, self.home):
            folder.mkdir(parents=True, exist_ok=True)
        self.host_key = key_line(keygen(self.dir / "host_ed25519"))
        self.client_pub = key_line(client_pub)
        (self.dir / "authorized_keys").write_text(self.client_pub + "\n")
        os.chmod(self.dir / "authorized_keys", 0o600)
        self.port = None

    def inventory_table(self, python, tags=(), trusted=True):
        lines = ["[[devices]]", f'name = "{self.name}"', 'host = "127.0.0.1"', f"port = {self.port}",
                 f'device_root = "{self.root}"', f'python = "{python}"', f"tags = {list(tags)!r}".replace("'", '"')]
        if trusted:
            lines.append(f'host_key = "{self.host_key}"')
        return "\n".join(lines) + "\n"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


class OpenSSHDevice(_Device):
    """One foreground OpenSSH sshd on 127.0.0.1 with a private config. Killing it kills its listener and its
    per-connection sshd processes (all below the listener), not the commands they ran."""

    kind = "openssh"

    def __init__(self, name, base, client_pub):
        super().__init__(name, base, client_pub)
        self.sshd = find_sshd()
        if self.sshd is None:
            raise TaoflowError("OpenSSH's sshd is not installed (Debian/Ubuntu: apt-get install openssh-server)")
        (self.dir / "sshd_config").write_text(SSHD_CONFIG.format(dir=self.dir))
        self.proc = None

    def start(self, port=None):
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation dir sshd insists on
        for _ in range(5):
            self.port = port or free_port()
            with open(self.dir / "sshd.log", "ab") as log:
                self.proc = subprocess.Popen([self.sshd, "-D", "-e", "-f", str(self.dir / "sshd_config"), "-p",
                                              str(self.port)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.stop()
            if port:
                break
        raise TaoflowError(f"sshd for {self.name} did not start: {(self.dir / 'sshd.log').read_text()[-800:]}")

    def _wait_ready(self, timeout=15):
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

    def cpu_seconds(self):
        """CPU seconds of the listener and the sessions it has reaped (for benchmarks)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def kill_sessions(self):
        """Kill every sshd process under the listener: open connections drop, their commands live on."""
        if self.proc is None:
            return
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


# --- embedded (asyncssh) ---------------------------------------------------------------------------------------

class _ServerLoop:
    """One event loop in a daemon thread that serves every embedded device of this process."""

    _instance = None
    _lock = threading.Lock()

    @classmethod
    def get(cls):
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="taoflow-sim-ssh", daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def call(self, awaitable, timeout=30):
        async def run():
            return await awaitable
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)


def _login_environment(user, home, shell, peer, local):
    """What sshd gives a command: a login environment, not the server's (nor the taoflow process's) own."""
    path = ("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" if os.geteuid() == 0
            else "/usr/local/bin:/usr/bin:/bin:/usr/games")
    client = f"{peer[0]} {peer[1]} {local[1]}"
    return {"USER": user, "LOGNAME": user, "HOME": str(home), "SHELL": shell, "PATH": path, "SHLVL": "1",
            "SSH_CLIENT": client, "SSH_CONNECTION": f"{peer[0]} {peer[1]} {local[0]} {local[1]}"}


class _Server(asyncssh.SSHServer):
    def __init__(self, device):
        self.device = device
        self.conn = None

    def connection_made(self, conn):
        self.conn = conn
        self.device.connections.add(conn)

    def connection_lost(self, exc):
        self.device.connections.discard(self.conn)

    def begin_auth(self, username):
        return True  # authentication is required, by public key only

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        return username == self.device.user and key_line(key.export_public_key("openssh").decode()) == \
            self.device.client_pub


class EmbeddedDevice(_Device):
    """A simulated device served by asyncssh inside this process (see the module docstring for what it does as
    sshd does)."""

    kind = "embedded"

    def __init__(self, name, base, client_pub):
        super().__init__(name, base, client_pub)
        self.user = getpass.getuser()
        try:
            self.shell = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
        except KeyError:
            self.shell = "/bin/sh"
        if not os.access(self.shell, os.X_OK):
            self.shell = "/bin/sh"
        self.connections = set()
        self.acceptor = None
        self.commands = 0  # exec requests served (benchmarks, tests)

    def start(self, port=None):
        loop = _ServerLoop.get()
        host_key = asyncssh.read_private_key(str(self.dir / "host_ed25519"))
        for _ in range(5):
            self.port = port or free_port()
            try:
                self.acceptor = loop.call(asyncssh.listen(
                    "127.0.0.1", self.port, server_host_keys=[host_key], server_factory=lambda: _Server(self),
                    process_factory=self._exec, sftp_factory=True, allow_scp=False, encoding=None,
                    agent_forwarding=False, x11_forwarding=False, allow_pty=False, keepalive_interval=0))
                return self
            except OSError as e:
                if port:
                    raise TaoflowError(f"the embedded SSH server for {self.name} cannot listen on 127.0.0.1:{port}: "
                                       f"{e.strerror}") from None
        raise TaoflowError(f"the embedded SSH server for {self.name} found no free port")

    async def _exec(self, process):
        self.commands += 1
        command = process.command
        if command is None:
            process.stderr.write(b"this simulated device runs commands only (no interactive shell)\n")
            process.exit(1)
            return
        conn = process.channel.get_connection()
        env = _login_environment(self.user, self.home, self.shell, conn.get_extra_info("peername")[:2],
                                 conn.get_extra_info("sockname")[:2])
        try:
            proc = await asyncio.create_subprocess_exec(
                self.shell, "-c", command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=str(self.home), env=env, start_new_session=True)
        except OSError as e:
            process.stderr.write(f"{self.shell}: {e.strerror}\n".encode())
            process.exit(127)
            return
        closed = asyncio.ensure_future(process.channel.wait_closed())
        feed = asyncio.ensure_future(self._feed(process, proc))
        outputs = asyncio.gather(self._pass(proc.stdout, process.stdout), self._pass(proc.stderr, process.stderr))
        waited = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait([closed, asyncio.ensure_future(self._settle(outputs, waited))],
                                     return_when=asyncio.FIRST_COMPLETED)
        if closed in done and proc.returncode is None:
            # The connection is gone under a running command: close its pipes and let it run on, as sshd does.
            feed.cancel()
            outputs.cancel()
            for pipe in (1, 2, 0):
                transport = proc._transport.get_pipe_transport(pipe)  # asyncio exposes no public pipe close
                if transport is not None:
                    transport.close()
            asyncio.ensure_future(proc.wait())  # reaped whenever it ends
            return
        feed.cancel()
        closed.cancel()
        code = proc.returncode
        try:
            if code < 0:
                name = signal.Signals(-code).name[3:]
                process.exit_with_signal(name, False, "", "")
            else:
                process.exit(code)
        except (OSError, asyncssh.Error):
            pass  # the channel closed while the exit status was sent

    @staticmethod
    async def _settle(outputs, waited):
        await outputs
        await waited

    @staticmethod
    async def _pass(src, dst):
        while True:
            chunk = await src.read(1 << 16)
            if not chunk:
                return
            try:
                dst.write(chunk)
                await dst.drain()
            except (OSError, asyncssh.Error):
                continue  # the client went away: keep draining so the command never blocks on a full pipe

    @staticmethod
    async def _feed(process, proc):
        try:
            while True:
                try:
                    data = await process.stdin.read(1 << 16)
                except asyncssh.SignalReceived as received:
                    sig = getattr(signal, f"SIG{received.signal}", None)
                    if sig is not None and proc.returncode is None:
                        os.killpg(proc.pid, sig)
                    continue
                except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                    continue
                if not data:
                    break
                proc.stdin.write(data)
                await proc.stdin.drain()
        except (OSError, asyncssh.Error):
            pass
        finally:
            if not proc.stdin.is_closing():
                proc.stdin.close()

    def kill_sessions(self):
        """Drop every open connection at once: the client sees them lost, their commands live on."""
        async def drop():
            for conn in list(self.connections):
                conn.abort()
        _ServerLoop.get().call(drop())

    def kill(self):
        """The server dies: no listener, no sessions, until start()."""
        self.stop()
        self.kill_sessions()

    def stop(self):
        acceptor, self.acceptor = self.acceptor, None
        if acceptor is not None:
            async def close():
                acceptor.close()
                await acceptor.wait_closed()
            _ServerLoop.get().call(close())


class HostOnlyDevice(EmbeddedDevice):
    """An embedded device that does no device work, for measuring the host's own cost of a rollout
    (bench/fleet.py --host-only): uploads (SFTP, or the tar stream of small files) write real files, and each
    exec request is answered in this process with the agent's real reply protocol. The agent's own store code
    (activate, revert, status, ... on real files) runs here; probe, build and smoke are replaced by answers that
    cost nothing: an ONNX Runtime Nano, no build, and a smoke test that finds exactly the package's expected
    detections. The shell commands the host sends besides the agent (mkdir, sha256sum, df, tar and the upload
    check) are done here too, without a process.
    """

    kind = "host-only"
    PROBE = {"l4t": {"release": "32.7.1", "board": "t210ref"}, "tensorrt": None, "cuda": "10.2.300", "cudnn": None,
             "nvinfer_plugin": None, "gpu": {"name": "NVIDIA Jetson Nano", "compute_capability": "5.3", "soc": "t210"},
             "power_mode": {"name": "MAXN", "id": 0}, "python": {"version": "3.6.9", "executable": "/usr/bin/python3"},
             "machine": "aarch64", "runtimes": ["onnxruntime"], "tools": {"trtexec": None, "tao-converter": None},
             "tool_links": {}, "imports_checked": False,
             "modules": {"numpy": "1.19.5", "cv2": "4.5.5", "tensorrt": None, "pycuda": None,
                         "onnxruntime": {"version": "1.10.0", "providers": ["CPUExecutionProvider"]}}}

    def __init__(self, name, base, client_pub):
        super().__init__(name, base, client_pub)
        from .agent import agent_dir
        if str(agent_dir()) not in sys.path:
            sys.path.insert(0, str(agent_dir()))

    async def _exec(self, process):
        self.commands += 1
        status, out, err = 0, "", ""
        try:
            argv = shlex.split(process.command or "")
            if argv[:2] != ["exec", "timeout"] or argv[5:7] != ["sh", "-c"]:
                raise ValueError("not a command the taoflow host sends")
            inner = argv[7]
            stdin = await process.stdin.read()  # the host always ends its input (a tar of small files, a key)
            if inner.startswith(("cd ", "IFS= read")):  # agent.agent_command
                status, out = self._agent(shlex.split(inner))
            else:
                status, out, err = self._shell(inner, stdin)
        except Exception as e:  # noqa: BLE001 - answered as a failed command, as a shell would; never a dropped link
            status, err = 127, f"host-only simulated device: {type(e).__name__}: {e}\n"
        if out:
            process.stdout.write(out.encode())
        if err:
            process.stderr.write(err.encode())
        process.exit(status)

    def _shell(self, inner, stdin=b""):
        """`mkdir -p -- DIRS || exit 3; sha256sum -- PATHS 2>/dev/null; echo @df; df -Pk ROOT 2>/dev/null; true`
        (Session.prepare), and `UPLOAD_CHECKS; tar -x -o -m -f - -C ROOT || exit 4; k|r PATH SHA256 N; ...; true`
        (Session._unpack_and_check: the tar comes on stdin)."""
        if inner.startswith(UPLOAD_CHECKS):
            inner = inner[len(UPLOAD_CHECKS):]
        lexer = shlex.shlex(inner, posix=True, punctuation_chars=";|&>")
        lexer.whitespace_split = True
        statements, words = [], []
        for token in lexer:  # punctuation outside quotes comes as its own token; quoted names stay whole
            if token == ";":
                statements.append(words)
                words = []
            else:
                words.append(token)
        statements.append(words)
        out = []
        for words in statements:
            if "||" in words:  # `mkdir ... || exit 3`: this server's mkdir either works or raises
                words = words[:words.index("||")]
            if words[-3:] == ["2", ">", "/dev/null"]:
                words = words[:-3]
            if not words or words == ["true"]:
                continue
            if words[0] == "mkdir":
                for d in words[3:]:
                    os.makedirs(d, exist_ok=True)
            elif words[0] == "sha256sum":
                for path in words[2:]:
                    if os.path.isfile(path):
                        out.append(f"{sha256_file(path)}  {path}\n")
            elif words[:2] == ["echo", "@df"]:
                out.append("@df\n")
            elif words[:2] == ["tar", "-x"]:
                with tarfile.open(fileobj=io.BytesIO(stdin), mode="r:") as tar:
                    tar.extractall(words[-1], filter="data")
            elif words[0] in ("k", "r") and len(words) == 4:  # the upload check's shell functions
                path, digest, index = words[1:]
                written = path + (".part" if words[0] == "r" else "")
                if os.path.isfile(written) and sha256_file(written) == digest:
                    if words[0] == "r":
                        os.replace(written, path)
                    out.append(f"@ok {index}\n")
                elif os.path.lexists(written):
                    os.unlink(written)
            elif words[0] == "df":
                st = os.statvfs(words[-1])
                blocks, free = st.f_blocks * st.f_frsize // 1024, st.f_bavail * st.f_frsize // 1024
                out.append(f"Filesystem 1024-blocks Used Available Capacity Mounted on\nsim {blocks} "
                           f"{blocks - free} {free} 0% /\n")
            else:
                raise ValueError(f"unsupported command {words[0]!r}")
        return 0, "".join(out), ""

    def _agent(self, words):
        import agent_common
        import agent_probe
        import agent_store
        import taoflow_agent
        start = next(i for i, w in enumerate(words) if w.endswith(("taoflow_agent.py", "taoflow_agent.pyz")))
        args = taoflow_agent.build_parser().parse_args(words[start + 1:])
        try:
            reply = {"ok": True, "result": self._answer(args, agent_store, agent_probe)}
        except agent_common.AgentError as e:
            reply = {"ok": False, "error": str(e), "details": e.details}
        reply.update(command=args.command, protocol=taoflow_agent.AGENT_PROTOCOL, cpu_s=0.0)
        return (0 if reply["ok"] else 1), json.dumps(reply, sort_keys=True) + "\n"

    def _answer(self, args, agent_store, agent_probe):
        root = args.root
        if args.command == "probe":
            disk = os.statvfs(root)
            return dict(self.PROBE, memory={"total_mb": 3956, "available_mb": 2600, "swap_total_mb": 1978,
                                            "swap_free_mb": 1978},
                        disk={"path": root, "free_mb": disk.f_bavail * disk.f_frsize >> 20,
                              "total_mb": disk.f_blocks * disk.f_frsize >> 20},
                        models=agent_probe.installed_models(root))
        if args.command == "build":
            return {"runtime": "onnxruntime", "runtime_version": "1.10.0", "seconds": 0.0}
        if args.command == "smoke":
            staging = agent_store.staging_dir(root, args.name, args.version)
            if os.path.isdir(staging):
                record = self._smoke_record(staging)
            elif args.activate:
                record = agent_store.installed_smoke(root, args.name, args.version)
            else:
                raise agent_store.AgentError(f"{args.name} {args.version} is not staged")
            if args.activate:
                record["activated"] = agent_store.activate(root, args.name, args.version, args.keep, args.wave,
                                                           args.rollout)
            return record
        if args.command == "activate":
            return agent_store.activate(root, args.name, args.version, args.keep, args.wave, args.rollout)
        if args.command == "revert":
            return agent_store.revert(root, args.name, args.version, args.fence)
        if args.command == "rollback":
            return agent_store.rollback(root, args.name, args.to)
        if args.command == "discard":
            return agent_store.discard(root, args.name, args.version)
        return agent_store.status(root, args.name)

    @staticmethod
    def _smoke_record(staging):
        import agent_common
        import agent_package
        expected = agent_common.load_json(os.path.join(staging, "samples", "expected.json"))[0]
        images = {name: {"detections": dets, "missing": [], "extra": []}
                  for name, dets in expected["images"].items()}
        record = {"passed": True, "runtime": "onnxruntime", "runtime_version": "1.10.0",
                  "package_digest": agent_package.package_digest(staging), "fps": 30.0, "latency_ms": 33.3,
                  "iterations": 0, "images": images, "checked_at": time.time()}
        agent_common.write_json_atomic(os.path.join(staging, "smoke.json"), record)
        return record


DEVICE_CLASSES = {"openssh": OpenSSHDevice, "embedded": EmbeddedDevice, "host-only": HostOnlyDevice}


class SimFleet:
    """N simulated devices of one server kind sharing one client key; writes fleet.toml for them."""

    def __init__(self, base, client_key, kind="auto"):
        self.base = Path(base)
        self.kind = kind if kind == "host-only" else resolve_server_kind(kind)
        self.client_key = Path(client_key)
        self.client_pub = keygen(self.client_key)
        self.devices = []

    def add(self, name):
        device = DEVICE_CLASSES[self.kind](name, self.base, self.client_pub).start()
        self.devices.append(device)
        return device

    def write_inventory(self, pythons, tags=None, untrusted=(), command_timeout=120, extra_defaults="",
                        concurrency=8):
        """`pythons`: one device Python per device (or a single one for all)."""
        if isinstance(pythons, (str, Path)):
            pythons = [pythons] * len(self.devices)
        text = (f'[defaults]\nuser = "{getpass.getuser()}"\nkey = "{self.client_key}"\nconnect_timeout = 5\n'
                f"command_timeout = {command_timeout}\nbuild_timeout = 120\nconcurrency = {concurrency}\n"
                f"{extra_defaults}\n")
        for i, (device, python) in enumerate(zip(self.devices, pythons)):
            text += "\n" + device.inventory_table(python, (tags or {}).get(device.name, [f"group{i % 2}"]),
                                                  trusted=device.name not in untrusted)
        path = self.base / "fleet.toml"
        path.write_text(text)
        return path

    def stop(self):
        for device in self.devices:
            device.kill()


class SimulatedNano:
    """The demo's one simulated Nano in <workspace>/sim-devices/<name>: start() returns its inventory path."""

    def __init__(self, workspace, name="sim-nano-01", kind="auto"):
        self.name = name
        self.base = Path(workspace).resolve() / "sim-devices"
        self.kind = resolve_server_kind(kind)
        self.device = None

    @property
    def root(self):
        return self.base / self.name / "root"

    def start(self):
        self.base.mkdir(parents=True, exist_ok=True)
        client_key = self.base / self.name / "client_ed25519"
        client_key.parent.mkdir(parents=True, exist_ok=True)
        self.device = DEVICE_CLASSES[self.kind](self.name, self.base, keygen(client_key)).start()
        inventory = self.base / "fleet.toml"
        inventory.write_text(
            f"# The demo's simulated device ({self.kind} SSH server, taoflow/deploy/simulator.py); its host key was\n"
            "# generated here.\n"
            "[defaults]\n"
            f'user = "{getpass.getuser()}"\n'
            f'key = "{client_key}"\n\n'
            + self.device.inventory_table(sys.executable, tags=["demo", "canary"]))
        return inventory

    def stop(self):
        if self.device is not None:
            self.device.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    """Serve a simulated fleet from one process until stdin closes: `python -m taoflow.deploy.simulator --devices N
    --base DIR [--kind host-only|embedded]`. Prints `ready <inventory path>` once every device listens."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m taoflow.deploy.simulator", description=main.__doc__)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--base", type=Path, required=True, help="folder for the devices (created)")
    parser.add_argument("--kind", choices=("host-only", "embedded"), default="host-only")
    parser.add_argument("--python", default=sys.executable, help="the devices' Python (inventory `python`)")
    parser.add_argument("--concurrency", type=int, default=8, help="the inventory's [defaults] concurrency")
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    raise_open_file_limit(2 * args.devices + 256)
    args.base.mkdir(parents=True, exist_ok=True)
    fleet = SimFleet(args.base, args.base / "client_ed25519", kind=args.kind)
    try:
        for i in range(args.devices):
            fleet.add(f"sim-{i:04d}")
        inventory = fleet.write_inventory(args.python, tags={d.name: ["canary"] if i == 0 else ["fleet"]
                                                             for i, d in enumerate(fleet.devices)},
                                          concurrency=args.concurrency)
        print(f"ready {inventory}", flush=True)
        sys.stdin.read()
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
