"""SSH and SFTP to one device, through asyncssh.

Why asyncssh and not paramiko: a deploy is I/O-bound fan-out to dozens of Nanos. With asyncssh one event loop
holds every connection, the concurrency limit is an asyncio.Semaphore and every remote command gets an asyncio
timeout; paramiko blocks, so it needs a thread per device and per-channel timeouts done by hand. asyncssh refuses
unknown host keys unless told otherwise, reads no ~/.ssh/config when given config=None (a user's
`StrictHostKeyChecking no` cannot weaken a deploy), and its SFTP client writes at explicit offsets and
pipelines large writes, which resumable uploads need.

Every remote command runs under coreutils `timeout -k 10 SECONDS` as well as a local asyncio timeout, so a hung
build is killed on the device, not just abandoned by the host.
"""

import asyncio
import contextlib
import io
import logging
import shlex
import tarfile
from functools import lru_cache
from pathlib import Path

import asyncssh

from ..fsutil import sha256_file
from .errors import DeployError, HostKeyError, RemoteTimeout, UnreachableError, UploadError
from .replies import MAX_REPLY_BYTES, ReplyError

# asyncssh logs every channel and SFTP request at INFO: hundreds of lines per device and deploy, drowning the
# deploy's own log. Quiet unless someone configured the asyncssh logger on purpose.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

# asyncssh formats a log line for every SSH packet before it asks whether packet logging (its debug level 3) is
# on: about 5 % of the host's CPU in a rollout to a large fleet (bench/fleet.py --host-only). Format only when it
# is on. (asyncssh internals, pinned below 3 in pyproject; left alone if they are not what this expects.)
_packet_logger = getattr(getattr(asyncssh, "packet", None), "SSHPacketLogger", None)
_ssh_logger = getattr(getattr(asyncssh, "logging", None), "SSHLogger", None)
if _packet_logger is not None and hasattr(_packet_logger, "_log_packet") and hasattr(_ssh_logger, "_debug_level"):
    _format_packet_log = _packet_logger._log_packet

    def _log_packet(self, *args, **kwargs):
        if _ssh_logger._debug_level >= 3:
            _format_packet_log(self, *args, **kwargs)

    _packet_logger._log_packet = _log_packet

CHUNK = 4 << 20          # asyncssh splits each write into pipelined SFTP requests
# Files up to BATCH_FILE_BYTES travel together as one tar stream on the stdin of the command that verifies the
# upload (`tar -x` is on every L4T/Ubuntu and BusyBox): one exec instead of an SFTP open/write/close per file and
# a separate checksum command. A device is one round trip away per request, so a package of a model, its
# metadata and a few sample images costs one exchange plus SFTP for the model alone. Larger files keep SFTP:
# they resume from the prefix a dropped connection left, a tar stream would start again from zero.
BATCH_FILE_BYTES = 1 << 20
BATCH_BYTES = 8 << 20    # at most this much per batch (held in memory, resent whole after a dropped link)
KILL_GRACE_S = 10        # `timeout -k`: SIGKILL this long after SIGTERM
LOCAL_GRACE_S = 20       # the host waits this much longer than the device-side limit
# AES-GCM first: the host's side of every connection runs in one Python event loop, and asyncssh's
# chacha20-poly1305 (its default) builds five cipher objects per packet, while AES-GCM is one call into
# OpenSSL's AES-NI code; a Nano's Cortex-A57 has the ARMv8 AES instructions for sshd's side. chacha20 and CTR
# stay as fallbacks for servers that offer nothing else.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr",
           "aes256-ctr")


def raise_open_file_limit(wanted):
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (up to the hard limit); return the new soft limit.
    A rollout keeps one connection per device open from its probe to its group's end: a fleet of a thousand needs
    more descriptors than the usual soft limit of 1024."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard if hard != resource.RLIM_INFINITY else wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def host_pattern(device):
    """The known_hosts host field OpenSSH uses for this device: `host`, or `[host]:port` off port 22."""
    return device.host if device.port == 22 else f"[{device.host}]:{device.port}"


def trusted_keys(device):
    """The device's trusted host keys: its inventory host_key plus matching known_hosts lines. Empty = refuse."""
    lines = []
    if device.host_key:
        lines.append(f"{host_pattern(device)} {device.host_key}")
    if device.known_hosts is not None and device.known_hosts.is_file():
        lines.extend(device.known_hosts.read_text(encoding="utf-8").splitlines())
    return asyncssh.import_known_hosts("\n".join(lines) + "\n")


async def scan_host_key(device):
    """The host key the device presents, as an OpenSSH public key line (for the user to verify and trust)."""
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(device.host, device.port, config=None),
                                     device.connect_timeout)
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
        raise UnreachableError(f"cannot read the host key of {device.address}: {e}", device.name) from None
    if key is None:
        raise UnreachableError(f"{device.address} presented no host key", device.name)
    return key.export_public_key("openssh").decode().strip()


def trust_host_key(device, key_line, known_hosts):
    """Append `key_line` for this device to an OpenSSH known_hosts file: the explicit trust-on-first-use step.

    Never called implicitly: the user runs it after checking the fingerprint that scan_host_key showed.
    """
    asyncssh.import_public_key(key_line)  # refuse garbage before it reaches a trust file
    path = Path(known_hosts).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{host_pattern(device)} {key_line}\n")


def fingerprint(key_line):
    return asyncssh.import_public_key(key_line).get_fingerprint("sha256")


def _file_stamp(path):
    st = Path(path).stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


@lru_cache(maxsize=16)
def _client_key(path, *stamp):
    """The client's private key, parsed once per file version: a fleet of a thousand devices shares one key, and
    parsing it is a measurable share of the host's work per connection. Nothing but the parsed key is kept."""
    return asyncssh.read_private_key(path)


class Session:
    """One device's SSH connection; reconnects on demand. Counts bytes uploaded and the agent's CPU seconds for
    reports and benchmarks."""

    def __init__(self, device):
        self.device = device
        self.conn = None
        self.sftp = None
        self.bytes_sent = 0
        self.agent_cpu_s = 0.0  # CPU seconds the agent reported for its commands on this session's device
        self.prepared = None  # (hashes, free MiB) a probe read ahead for this session's staging (agent.ship_agent)

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def connect(self):
        if self.conn is not None:
            return
        d = self.device
        try:
            key = _client_key(str(d.key), *_file_stamp(d.key))
        except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as e:
            # The message names the file and the reason only; key material never reaches an error or a log.
            reason = e.strerror if isinstance(e, OSError) else str(e)  # asyncssh's reasons hold no key bytes
            raise UnreachableError(f"cannot use the SSH key {d.key}: {reason} (an unencrypted key file is needed; "
                                   f"see {d.source})", d.name) from None
        try:
            self.conn = await asyncio.wait_for(asyncssh.connect(
                d.host, d.port, username=d.user, client_keys=[key], known_hosts=trusted_keys(d),
                config=None, agent_path=None, connect_timeout=d.connect_timeout, login_timeout=d.connect_timeout,
                keepalive_interval=10, keepalive_count_max=3, encryption_algs=CIPHERS), d.connect_timeout + 5)
        except asyncssh.HostKeyNotVerifiable:
            raise await self._host_key_error() from None
        except asyncssh.PermissionDenied:
            raise UnreachableError(f"{d.user}@{d.address} refused the key {d.key} (check authorized_keys)",
                                   d.name) from None
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
            err = UnreachableError(f"cannot connect to {d.address}: {e or type(e).__name__}", d.name)
            err.retryable = True
            raise err from None

    async def _host_key_error(self):
        d = self.device
        try:
            offered = await scan_host_key(d)
            shown = f"it offers {offered.split()[0]} {fingerprint(offered)}"
        except DeployError:
            shown = "its key could not be read"
        trusted = "does not match the trusted key" if (d.host_key or d.known_hosts) else "is unknown"
        return HostKeyError(f"host key of {d.address} {trusted} ({shown}); nothing was sent. Verify the fingerprint "
                            f"on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and set host_key in "
                            f"{d.source} or add it to known_hosts", d.name)

    async def close(self, abort=False):
        """Close the connection; `abort` drops it at once (after a failure, when nothing more can be sent)."""
        conn, self.conn, self.sftp = self.conn, None, None
        if conn is not None:
            conn.abort() if abort else conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)

    async def _guard(self, coro, what, timeout):
        """Await `coro` under a local timeout; map transport failures to UnreachableError(retryable)."""
        try:
            await self.connect()
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise RemoteTimeout(f"{what} timed out after {timeout:.0f} s", self.device.name) from None
        except (asyncssh.ConnectionLost, asyncssh.SFTPConnectionLost, asyncssh.DisconnectError, ConnectionError,
                asyncio.IncompleteReadError) as e:
            await self.close(abort=True)
            err = UnreachableError(f"connection to {self.device.address} lost during {what}: "
                                   f"{e or type(e).__name__}", self.device.name)
            err.retryable = True
            raise err from None
        except asyncssh.SFTPError as e:  # e.g. a write failing on a full disk (OpenSSH says only "Failure")
            raise DeployError(f"{what} failed on the device: {e.reason}", self.device.name) from None
        except asyncssh.Error as e:
            raise DeployError(f"{what} failed: {e}", self.device.name) from None
        finally:
            if asyncio.iscoroutine(coro):
                coro.close()  # not awaited when connect() failed first; closing it silences the warning

    async def run(self, command, timeout=None, input=None, what=None):
        """Run a shell command on the device under `timeout -k`; return (exit status, stdout, stderr)."""
        timeout = float(timeout or self.device.command_timeout)
        remote = f"exec timeout -k {KILL_GRACE_S} {int(timeout)} sh -c {shlex.quote(command)}"
        what = what or command.split()[0]
        result = await self._guard(self._conn_run(remote, input), what, timeout + KILL_GRACE_S + LOCAL_GRACE_S)
        if result.exit_status is None and result.exit_signal is None:
            # The channel closed without an exit status: sshd (or the link) died under the command.
            await self.close(abort=True)
            err = UnreachableError(f"connection to {self.device.address} lost during {what}", self.device.name)
            err.retryable = True
            raise err
        if result.exit_status == 124:
            raise RemoteTimeout(f"{what} ran past {timeout:.0f} s and was stopped on the device", self.device.name)
        if result.exit_status == 137 or result.exit_signal:
            signal = result.exit_signal[0] if result.exit_signal else "KILL"
            raise DeployError(f"{what} was killed on the device (SIG{signal}; SIGKILL comes from the time limit or "
                              f"the OOM killer)", self.device.name)
        return result.exit_status, result.stdout or "", result.stderr or ""

    async def _conn_run(self, remote, input):
        """Run `remote` with `input` (str or bytes) on its stdin; its stdout and stderr are read up to
        MAX_REPLY_BYTES each, then the channel is closed (a device cannot make the host hold a flood in memory)."""
        proc = await self.conn.create_process(remote, encoding=None)
        try:
            if input is not None:
                proc.stdin.write(input.encode() if isinstance(input, str) else input)
            proc.stdin.write_eof()
            reads = [asyncio.ensure_future(_read_capped(proc.stdout)), asyncio.ensure_future(_read_capped(proc.stderr))]
            try:
                out, err = await asyncio.gather(*reads)
            except _Flood:
                raise ReplyError(f"the device sent more than {MAX_REPLY_BYTES >> 20} MiB on "
                                 f"{'stdout' if reads[0].done() and reads[0].exception() else 'stderr'}; the "
                                 f"command was cut off", self.device.name) from None
            finally:
                for read in reads:
                    read.cancel()
            await proc.wait_closed()
        finally:
            proc.close()
        return _Completed(proc.exit_status, proc.exit_signal, out.decode("utf-8", "replace"),
                          err.decode("utf-8", "replace"))

    async def _sftp(self):
        await self.connect()
        if self.sftp is None:
            self.sftp = await self.conn.start_sftp_client()
        return self.sftp

    async def sha256(self, paths):
        """{remote path: sha256} for those of `paths` that exist (one `sha256sum` round trip)."""
        return (await self.prepare([], paths))[0]

    async def prepare(self, dirs, paths):
        """One round trip: create `dirs`, hash the existing `paths`, read free space of the device root.

        Returns ({path: sha256}, free MiB or None). Each remote command costs a session setup on the device
        (a login shell, ~0.1-0.3 s), so the deploy asks everything it needs before uploading in one go.
        """
        root = shlex.quote(self.device.device_root)
        mkdir = f"mkdir -p -- {' '.join(shlex.quote(d) for d in dirs)} || exit 3; " if dirs else ""
        hashes = f"sha256sum -- {' '.join(shlex.quote(p) for p in paths)} 2>/dev/null; " if paths else ""
        status, out, err = await self.run(f"{mkdir}{hashes}echo @df; df -Pk {root} 2>/dev/null; true",
                                          what="prepare")
        if status == 3:
            raise DeployError(f"cannot create directories on the device: {err.strip()}", self.device.name)
        head, _, df = out.partition("@df\n")
        found = {}
        for line in head.split("\n"):
            digest, name = parse_sha256sum_line(line)
            if digest is not None:
                found[name] = digest
        rows = df.strip().splitlines()
        try:
            free = int(rows[-1].split()[3]) // 1024 if len(rows) >= 2 else None
        except (ValueError, IndexError):
            free = None
        return found, free

    async def upload_files(self, items, have=None, progress=None, in_place=False):
        """Upload [(local path, remote path, sha256)] unless the remote already has that sha256.

        Small files (BATCH_FILE_BYTES) go as one tar stream into the command that verifies the upload; larger
        ones by SFTP to `remote + '.part'`, resuming from the size already there (a dropped connection leaves a
        correct prefix: writes are sequential). Then, in that one command, every file is checked against its
        sha256 on the device: the good ones are renamed into place, the bad ones deleted, so the next attempt
        resends those from zero.
        `in_place`: write to the remote path itself (resuming a prefix there) and verify it, without the rename:
        for a version's staging directory, which nothing reads before the host has verified every file.
        `have`: {remote path: sha256} as `prepare` read it (upload_paths: the targets and, unless in place,
        their `.part` siblings); a file that is not there is written from zero without asking for its size.
        `progress(session, local, done, size)` is called after each chunk (a batched file: once, whole).
        Returns the number of files sent.
        """
        if have is None:
            have = await self.sha256(upload_paths((remote for _, remote, _ in items), in_place))
        todo = [(Path(local), remote, digest) for local, remote, digest in items if have.get(remote) != digest]
        if not todo:
            return 0
        suffix = "" if in_place else ".part"
        batch, batched = [], 0
        for local, remote, digest in todo:
            if have.get(remote + suffix) == digest:
                continue  # sent whole before a dropped connection; only the check (and rename) is missing
            size = local.stat().st_size
            if size <= BATCH_FILE_BYTES and batched + size <= BATCH_BYTES and self._batchable(remote):
                batch.append((local, remote + suffix, size, digest))
                batched += size
                continue
            await self._guard(self._send(local, remote + suffix, progress, resume=remote + suffix in have),
                              f"upload of {local.name}", self.device.command_timeout)
        bad = await self._unpack_and_check(batch, todo, in_place, progress)
        if bad:
            err = UploadError(f"checksum mismatch after upload of {', '.join(bad)}; the partial files were removed",
                              self.device.name)
            err.retryable = True  # the next attempt starts those files from zero
            raise err
        return len(todo)

    def _batchable(self, remote):
        """Whether `remote` can be a member of a tar extracted in the device root (no `..`, nothing outside)."""
        rel = remote[len(self.device.device_root) + 1:] if remote.startswith(self.device.device_root + "/") else ""
        return bool(rel) and ".." not in rel.split("/") and not rel.startswith("/")

    async def _unpack_and_check(self, batch, todo, in_place, progress):
        """One command: extract `batch` [(local, remote path to write, size, sha256)] from a tar on stdin into the
        device root, then check every file of `todo` against its sha256, renaming `.part` files that pass into
        place and deleting what fails. Returns the names of the local files whose upload failed the check."""
        root = self.device.device_root
        data = _tar(batch, root) if batch else None
        lines = [UPLOAD_CHECKS]
        if batch:
            # -o: files owned by the login user even when that is root; -m: stamped with the device's time (a Nano
            # without network time boots in the past, and GNU tar warns about every file "from the future")
            lines.append(f"tar -x -o -m -f - -C {shlex.quote(root)} || exit 4")
        check = "k" if in_place else "r"
        lines += [f"{check} {shlex.quote(remote)} {digest} {i}" for i, (_, remote, digest) in enumerate(todo)]
        lines.append("true")
        status, out, err = await self.run("; ".join(lines), input=data, what="upload check")
        if status == 4:
            raise DeployError(f"unpacking the upload failed on the device: {err.strip()[-300:]}", self.device.name)
        if status != 0:
            raise DeployError(f"checking the upload failed on the device (exit status {status}): "
                              f"{err.strip()[-300:]}", self.device.name)
        if batch:
            self.bytes_sent += sum(size for _, _, size, _ in batch)
            if progress is not None:
                for local, _, size, _ in batch:
                    progress(self, local, size, size)
        passed = {int(word) for line in out.splitlines() if line.startswith("@ok ")
                  for word in line.split()[1:2] if word.isdigit()}
        return [local.name for i, (local, _, _) in enumerate(todo) if i not in passed]

    async def readlink(self, path):
        """Target of a remote symlink, or None when there is none (e.g. no `current` yet)."""
        try:
            return await self._guard(self._sftp_op("readlink", path), "readlink", self.device.command_timeout)
        except DeployError:
            if await self._guard(self._sftp_op("exists", path), "stat", self.device.command_timeout):
                raise
            return None

    async def _sftp_op(self, name, *args):
        return await getattr(await self._sftp(), name)(*args)

    async def _send(self, local, part, progress, resume=True):
        size = local.stat().st_size
        sftp = await self._sftp()
        offset = 0
        if resume:
            try:
                offset = (await sftp.stat(part)).size or 0
            except asyncssh.SFTPNoSuchFile:
                pass
        if offset > size:
            offset = 0
        async with sftp.open(part, "r+b" if offset else "wb") as f:
            with open(local, "rb") as src:
                src.seek(offset)
                while chunk := src.read(CHUNK):
                    await f.write(chunk, offset)
                    offset += len(chunk)
                    self.bytes_sent += len(chunk)
                    if progress is not None:
                        progress(self, local, offset, size)

    async def download(self, remote, local, sha256=None):
        """Fetch a device file (e.g. a canary's engine) to a temp sibling, verify, then rename into place."""
        local = Path(local)
        tmp = local.with_name(f".{local.name}.part")
        await self._guard(self._sftp_op("get", remote, str(tmp)), f"download of {remote}",
                          self.device.command_timeout)
        if sha256 is not None and sha256_file(tmp) != sha256:
            tmp.unlink()
            raise UploadError(f"{remote}: checksum mismatch after download", self.device.name)
        tmp.replace(local)
        return local


_SHA256SUM_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def parse_sha256sum_line(line):
    """(digest, file name) of one line of GNU `sha256sum` output, or (None, None).

    A name holding a backslash, newline or carriage return is printed escaped (`\\`, `\n`, `\r`) on a line that
    starts with a backslash; read literally, such a file would never match its own checksum.
    """
    escaped = line.startswith("\\")
    digest, sep, name = line[escaped:].partition("  ")
    if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None, None
    if escaped:
        out, i = [], 0
        while i < len(name):
            if name[i] == "\\" and i + 1 < len(name) and name[i + 1] in _SHA256SUM_ESCAPES:
                out.append(_SHA256SUM_ESCAPES[name[i + 1]])
                i += 2
            else:
                out.append(name[i])
                i += 1
        name = "".join(out)
    return digest, name


# Shell functions of the upload check (Session._unpack_and_check): `k PATH SHA256 N` keeps a file written in place
# if it has that sha256 and deletes it otherwise; `r PATH SHA256 N` does so for PATH.part and renames it to PATH
# when it passes. Each prints `@ok N` for a file that passed. `sha256sum < FILE` prints "DIGEST  -" in GNU
# coreutils and BusyBox alike.
UPLOAD_CHECKS = ('c() { [ "$(sha256sum < "$1")" = "$2  -" ]; }; '
                 'k() { if c "$1" "$2"; then echo "@ok $3"; else rm -f -- "$1"; fi; }; '
                 'r() { if c "$1.part" "$2" && mv -f -- "$1.part" "$1"; then echo "@ok $3"; '
                 'else rm -f -- "$1.part"; fi; }')


def _tar(batch, root):
    """The tar stream of `batch` [(local, remote path, size, sha256)], members named relative to `root`, mode
    0644 and each file's own modification time: the same bytes for every device of a fleet, built once (the
    sha256 in the cache key: changed contents never reuse a stream)."""
    return _tar_members(tuple((str(local), remote[len(root) + 1:], size, local.stat().st_mtime_ns, digest)
                              for local, remote, size, digest in batch))


@lru_cache(maxsize=4)
def _tar_members(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        for local, name, size, mtime_ns, _ in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, mtime_ns // 10**9
            with open(local, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def upload_paths(remotes, in_place=False):
    """The remote paths `prepare` should hash before an upload: each target and, unless written in place, its
    `.part` (a resumable prefix)."""
    return [path for remote in remotes for path in ((remote,) if in_place else (remote, remote + ".part"))]


class _Completed:
    def __init__(self, exit_status, exit_signal, stdout, stderr):
        self.exit_status, self.exit_signal, self.stdout, self.stderr = exit_status, exit_signal, stdout, stderr


class _Flood(Exception):
    pass


async def _read_capped(stream, limit=MAX_REPLY_BYTES):
    """Everything `stream` sends until EOF (bytes); _Flood once it passes `limit` bytes."""
    parts, size = [], 0
    while chunk := await stream.read(1 << 16):
        size += len(chunk)
        if size > limit:
            raise _Flood()
        parts.append(chunk)
    return b"".join(parts)


async def with_retries(session, op, attempts=4, backoff_s=0.5):
    """Run `op()`, retrying after a reconnect when it fails with a retryable DeployError (dropped connection,
    bad checksum); only for idempotent steps."""
    for attempt in range(attempts):
        try:
            return await op()
        except DeployError as e:
            if not getattr(e, "retryable", False) or attempt == attempts - 1:
                raise
            await session.close(abort=True)
            await asyncio.sleep(backoff_s * (2 ** attempt))
