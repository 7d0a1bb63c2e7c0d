"""Run model-written Python code in a separate, locked-down process.

Model output is untrusted, so code it writes (reference programs of the Task Creator, solutions
of program tasks) runs only through :func:`run_code` / :func:`run_function`. Each call starts a
fresh process tree and tears it down completely, whatever the code does.

What holds (the security boundary), in ``namespace`` isolation, used when the caller is root
with CAP_SYS_ADMIN (measured on the development machine: root, unshare works):

- new mount, network, pid, IPC and UTS namespaces: no network interface but a downed loopback,
  a fresh /proc showing only the sandbox, and when the sandbox's pid 1 exits the kernel kills
  every process left in it (fork bombs, ``setsid`` escapes and daemons included);
- the whole filesystem remounted read-only and nosuid inside that namespace; /root, /home,
  /tmp, /run, ... hidden behind empty tmpfs except the interpreter; the working directory (cwd,
  HOME and TMPDIR) is a private tmpfs of ``disk_mb`` that vanishes with the namespace;
- a fresh unprivileged uid per run (no capabilities, so RLIMIT_NPROC is enforced, and it owns
  nothing on the host), no supplementary groups, ``no_new_privs`` (setuid binaries cannot give
  root back);
- rlimits: CPU time, address space, process count, file size, no core dumps;
- a new session whose process group the parent SIGKILLs on wall-time expiry, on output overflow
  and after every run, plus a sweep that kills any process still running as the run's uid;
- a minimal environment built from scratch (no API keys), stdin from a file, ``close_fds``.

World-readable files outside the hidden directories (/usr, /etc, the repository) stay readable.
The run's processes die with the caller too: parent-death signals on every stage, and an alarm
in the first stage a few seconds past the wall limit.

``plain`` isolation is the fallback where namespaces cannot be made (not root, or no
CAP_SYS_ADMIN): rlimits, a new process group, the scrubbed environment and, where the caller is
root and the interpreter is readable by others, the fresh uid (which can still write
world-writable places such as /tmp). It has no network or filesystem isolation besides the
audit hook, and as root without a uid switch RLIMIT_NPROC does not apply; a fork bomb is then
held only by the audit hook and the final SIGKILL of the process group.

Defence in depth, not a boundary: before the untrusted code runs, a bootstrap installs a PEP 578
audit hook that refuses sockets, subprocesses, ``os.system``/``exec*``/``fork``/``posix_spawn``,
ctypes, signals, rlimit changes, writes outside the working directory and reads of secret paths,
and reports each refusal, so such programs end with status ``"blocked"``. Audit hooks run inside
the interpreter they watch and can be bypassed; they make refusals visible and cheap, the layers
above are what contain a program that gets past them.

Model code gets the standard library only (``-S``: no site-packages). Where several outcomes
apply, the status is the first of: blocked, output_limit, timeout, memory, error, ok.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Limits",
    "SandboxError",
    "SandboxResult",
    "SANDBOX_UIDS",
    "processes_of_uid",
    "isolation_mode",
    "run_code",
    "run_function",
]

log = logging.getLogger(__name__)

Status = Literal["ok", "timeout", "memory", "error", "output_limit", "blocked"]
Isolation = Literal["auto", "namespace", "plain"]

# Fresh uids are drawn at random from here: unused on any normal system, so RLIMIT_NPROC counts
# exactly one run's processes and "kill every process of this uid" touches nothing else.
SANDBOX_UIDS = range(2_000_000_000, 2_000_000_000 + (1 << 24))

# Hidden behind an empty tmpfs in namespace isolation (secrets, other users, world-writable
# places, unix sockets); the interpreter and the run's own directory are bound back in.
_COVER = ("/root", "/home", "/tmp", "/var/tmp", "/dev/shm", "/run", "/mnt", "/media")
_PATH = "/usr/local/bin:/usr/bin:/bin"
_HASH_SEED = "0"
_CTL_CAP = 64 * 1024
_DRAIN_SECONDS = 1.0


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not raised for anything the code does)."""


class _SetupFailed(Exception):
    pass


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run.

    ``cpu_seconds`` (rounded up to whole seconds: RLIMIT_CPU) and ``memory_mb`` (address space,
    RLIMIT_AS) apply to each process; ``wall_seconds`` to the whole run, startup included
    (about 0.15 s); ``output_bytes`` to each of stdout and stderr; ``processes`` counts
    processes and threads of the run's uid (RLIMIT_NPROC, effective only with a uid switch or
    a non-root caller); ``disk_mb`` caps the working directory (namespace isolation) and any
    single file (RLIMIT_FSIZE).
    """

    cpu_seconds: float = 5.0
    wall_seconds: float = 10.0
    memory_mb: int = 512
    output_bytes: int = 1_000_000
    processes: int = 16
    disk_mb: int = 64

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds", "memory_mb", "output_bytes", "processes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.disk_mb < 1:
            raise ValueError(f"Limits.disk_mb must be at least 1, got {self.disk_mb!r}")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run. ``stdout``/``stderr`` are truncated to ``Limits.output_bytes``.

    ``returncode`` is the exit code of the untrusted process (negative: killed by that signal;
    -9 also when the parent killed it), or None if it never reported one. ``value_json`` is the
    JSON text of the value returned by :func:`run_function` (None when no value came back);
    ``isolation`` says which isolation actually ran.
    """

    status: Status
    stdout: str
    stderr: str
    returncode: int | None
    message: str
    seconds: float
    value_json: str | None = None
    isolation: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def value(self) -> Any:
        """The value returned by :func:`run_function`; ValueError if none came back."""
        if self.value_json is None:
            raise ValueError(f"no value came back ({self.status}: {self.message})")
        return json.loads(self.value_json)


def run_code(
    code: str,
    *,
    stdin: str = "",
    limits: Limits | None = None,
    isolation: Isolation = "auto",
    audit_hook: bool = True,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in the sandbox and report how it ended.

    ``isolation="auto"`` uses namespaces where possible and falls back to ``plain`` (with a
    warning, once); ``"namespace"`` raises SandboxError where namespaces are unavailable.
    ``audit_hook=False`` leaves out the in-process audit hook; it exists to test the OS-level
    layers on their own. Safe to call from several threads at once.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be str, got {type(code).__name__}")
    return _run(code, stdin, limits or Limits(), isolation, audit_hook, None)


def run_function(
    code: str,
    name: str,
    args: list[Any] | tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    stdin: str = "",
    limits: Limits | None = None,
    isolation: Isolation = "auto",
    audit_hook: bool = True,
) -> SandboxResult:
    """Define ``code`` (as module ``__sandbox__``, so a ``__main__`` guard does not run), call
    ``name(*args, **kwargs)`` in the sandbox and return its value as JSON.

    ``args``/``kwargs`` must be JSON-serialisable. The value travels on a separate pipe, not
    stdout, so printing does not disturb it; on success ``result.value`` holds it. A value that
    is not JSON-serialisable gives status ``"error"``. The value comes from untrusted code: it
    is only as trustworthy as the program that produced it.
    """
    if not isinstance(code, str) or not isinstance(name, str):
        raise TypeError("code and name must be str")
    try:
        call = json.loads(json.dumps({"args": list(args), "kwargs": dict(kwargs or {})}))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"args and kwargs must be JSON-serialisable: {exc}") from exc
    call["name"] = name
    return _run(code, stdin, limits or Limits(), isolation, audit_hook, call)


def isolation_mode() -> Literal["namespace", "plain"]:
    """The isolation that ``isolation="auto"`` gives on this machine (runs a probe once)."""
    if _namespace_unavailable() is None and _namespace_state["checked"] is False:
        run_code("pass")
    return "plain" if _namespace_unavailable() else "namespace"


# --- mode selection and uids ------------------------------------------------------------------

_lock = threading.Lock()
_namespace_state: dict[str, Any] = {"broken": None, "checked": False}
_uids_in_use: set[int] = set()


def _namespace_unavailable() -> str | None:
    """Why namespace isolation cannot be used here, or None if it can (as far as known)."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if os.geteuid() != 0:
        return "not root (unprivileged user namespaces are not implemented)"
    with _lock:
        return _namespace_state["broken"]


def _mark_namespace(broken: str | None) -> None:
    with _lock:
        first = _namespace_state["broken"] is None and broken is not None
        _namespace_state["checked"] = True
        if broken is not None:
            _namespace_state["broken"] = broken
    if first:
        log.warning("sandbox: namespace isolation failed (%s); falling back to plain", broken)


def _allocate_uid() -> int:
    with _lock:
        while True:
            uid = SANDBOX_UIDS[secrets.randbelow(len(SANDBOX_UIDS))]
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _lock:
        _uids_in_use.discard(uid)


@functools.cache
def _source(name: str) -> str:
    # Read as text and passed with -c: the child needs no import path or package install.
    return (Path(__file__).resolve().parent / name).read_text(encoding="utf-8")


def _interpreter() -> str:
    if not sys.executable:
        raise SandboxError("no Python interpreter path (sys.executable is empty)")
    # The real binary: run directly it finds the base installation and ignores any venv.
    return os.path.realpath(sys.executable)


def _interpreter_dirs(python: str) -> list[str]:
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    dirs.add(os.path.dirname(python))
    # Drop any directory already inside another one: binding the outer one covers it.
    return sorted(d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs))


def _open_to_others(path: str, *, read: bool) -> bool:
    """Whether a uid that owns nothing can reach ``path`` (and read it, if ``read``)."""
    parts = Path(path).parts
    mode = 0
    for i in range(1, len(parts) + 1):
        try:
            mode = os.stat(os.path.join(*parts[:i])).st_mode
        except OSError:
            return False
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    return not read or bool(mode & stat.S_IROTH)


# --- one run ----------------------------------------------------------------------------------


def _run(
    code: str,
    stdin: str,
    limits: Limits,
    isolation: Isolation,
    audit_hook: bool,
    call: dict[str, Any] | None,
) -> SandboxResult:
    if isolation not in ("auto", "namespace", "plain"):
        raise ValueError(f"unknown isolation {isolation!r}")
    mode = "plain" if isolation == "plain" else "namespace"
    if mode == "namespace":
        reason = _namespace_unavailable()
        if reason is not None:
            if isolation == "namespace":
                raise SandboxError(f"namespace isolation unavailable: {reason}")
            mode = "plain"
    try:
        result = _run_once(mode, code, stdin, limits, audit_hook, call)
    except _SetupFailed as exc:
        if mode == "plain" or isolation == "namespace":
            raise SandboxError(f"{mode} sandbox could not start: {exc}") from None
        _mark_namespace(str(exc))
        try:
            return _run_once("plain", code, stdin, limits, audit_hook, call)
        except _SetupFailed as exc2:
            raise SandboxError(f"plain sandbox could not start: {exc2}") from None
    if mode == "namespace":
        _mark_namespace(None)
    return result


def _write_file(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it


def _run_once(
    mode: str,
    code: str,
    stdin: str,
    limits: Limits,
    audit_hook: bool,
    call: dict[str, Any] | None,
) -> SandboxResult:
    python = _interpreter()
    tmp = tempfile.mkdtemp(prefix="reasonloop-sandbox-")
    uid: int | None = None
    fds: list[int] = []
    try:
        # Traversable but not listable: the sandbox uid reads job.json by name, nothing else.
        os.chmod(tmp, 0o711)
        workdir = os.path.join(tmp, "work")
        os.mkdir(workdir, 0o700)
        interpreter_dirs = _interpreter_dirs(python)
        if mode == "namespace":
            uid = _allocate_uid()
        elif (
            os.geteuid() == 0
            and _open_to_others(tmp, read=False)
            and all(_open_to_others(p, read=True) for p in [python, *interpreter_dirs])
        ):
            uid = _allocate_uid()
            os.chown(workdir, uid, uid)
        job = {"code": code, "audit_hook": audit_hook, "function": None, "args": [], "kwargs": {}}
        if call is not None:
            job.update(function=call["name"], args=call["args"], kwargs=call["kwargs"])
        job_path = os.path.join(tmp, "job.json")
        _write_file(job_path, json.dumps(job).encode(), 0o644)
        stdin_path = os.path.join(tmp, "stdin")
        _write_file(stdin_path, stdin.encode(), 0o600)

        chan_r, chan_w = os.pipe()
        fds += [chan_r, chan_w]
        ctl_r, ctl_w = os.pipe()
        fds += [ctl_r, ctl_w]
        cfg = {
            "mode": mode,
            "python": python,
            "bootstrap": _source("_bootstrap.py"),
            "job": job_path,
            "workdir": workdir,
            "uid": uid,
            "cover": [os.path.realpath(d) for d in _COVER if _is_real_dir(d)],
            "keep": sorted({*interpreter_dirs, os.path.realpath(tmp)}),
            "channel_fd": chan_w,
            "ctl_fd": ctl_w,
            "cpu_seconds": max(1, int(limits.cpu_seconds + 0.999)),
            "wall_seconds": limits.wall_seconds,
            "memory_bytes": int(limits.memory_mb * 2**20),
            "disk_bytes": int(limits.disk_mb * 2**20),
            "processes": int(limits.processes),
            "env": {
                "PATH": _PATH,
                "LANG": "C.UTF-8",
                "HOME": workdir,
                # tempfile would otherwise probe the read-only /tmp first.
                "TMPDIR": workdir,
                "PYTHONHASHSEED": _HASH_SEED,
            },
        }
        cfg_path = os.path.join(tmp, "stage.json")
        _write_file(cfg_path, json.dumps(cfg).encode(), 0o600)
        with open(stdin_path, "rb") as stdin_file:
            proc = subprocess.Popen(
                [python, "-I", "-S", "-B", "-c", _source("_stage.py"), cfg_path],
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(chan_w, ctl_w),
                env={"PATH": _PATH, "LANG": "C.UTF-8"},
                cwd=tmp,
                close_fds=True,
                start_new_session=True,
            )
        # Only the child may hold the write ends, or the pipes never reach EOF.
        for fd in (chan_w, ctl_w):
            os.close(fd)
            fds.remove(fd)
        return _supervise(proc, mode, uid, chan_r, ctl_r, limits, call is not None)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if uid is not None:
            _release_uid(uid)
        _remove_tree(tmp)


def _is_real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _remove_tree(path: str) -> None:
    def retry(func: Any, p: str, _exc: Any) -> None:
        # The code may have made its own files unwritable; the owner of the tree can undo that.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=retry)


@dataclass
class _Capture:
    name: str
    cap: int
    data: bytearray = field(default_factory=bytearray)
    overflow: bool = False

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.data += chunk[: max(room, 0)]
            self.overflow = True
        else:
            self.data += chunk


def _supervise(
    proc: subprocess.Popen[bytes],
    mode: str,
    uid: int | None,
    chan_r: int,
    ctl_r: int,
    limits: Limits,
    want_value: bool,
) -> SandboxResult:
    start = time.monotonic()
    assert proc.stdout is not None and proc.stderr is not None
    captures = {
        proc.stdout.fileno(): _Capture("stdout", limits.output_bytes),
        proc.stderr.fileno(): _Capture("stderr", limits.output_bytes),
        chan_r: _Capture("channel", limits.output_bytes + 64 * 1024),
        ctl_r: _Capture("ctl", _CTL_CAP),
    }
    sel = selectors.DefaultSelector()
    pidfd: int | None = None
    killed: str | None = None  # why the parent killed the run: "wall" or "output"
    try:
        for fd in captures:
            sel.register(fd, selectors.EVENT_READ)
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):
            pidfd = None  # old kernel: poll instead
        deadline = start + limits.wall_seconds
        exited = False
        while not exited and killed is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed = "wall"
                break
            wait = remaining if pidfd is not None else min(remaining, 0.05)
            for key, _ in sel.select(wait):
                if key.fd == pidfd:
                    exited = True
                elif not _pump(key.fd, captures[key.fd], sel):
                    continue
                elif captures[key.fd].overflow and captures[key.fd].name != "ctl":
                    killed = "output"
            if pidfd is None and not exited:
                exited = _has_exited(proc.pid)
        seconds = time.monotonic() - start
        # Always, also after a normal exit: whatever the code left in the group dies now. The
        # leader is not reaped yet, so the group id cannot have been reused.
        _kill_group(proc.pid)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if uid is not None:
            _kill_uid(uid)
        drain_until = time.monotonic() + _DRAIN_SECONDS
        while len(sel.get_map()) > (1 if pidfd is not None else 0):
            remaining = drain_until - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(remaining):
                if key.fd != pidfd:
                    _pump(key.fd, captures[key.fd], sel)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
    by_name = {c.name: c for c in captures.values()}
    return _result(proc, mode, by_name, killed, seconds, limits, want_value)


def _pump(fd: int, capture: _Capture, sel: selectors.BaseSelector) -> bool:
    """Read what is there; False (and unregistered) at end of file. Never buffers past the cap."""
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        chunk = b""
    if not chunk:
        sel.unregister(fd)
        return False
    capture.add(chunk)
    return True


def _has_exited(pid: int) -> bool:
    # WNOWAIT: leave the zombie, so the process group stays reserved until it is killed.
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def processes_of_uid(uid: int) -> list[int]:
    """Pids of the processes whose real uid is ``uid`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return pids


def _kill_uid(uid: int, timeout: float = 5.0) -> None:
    """Kill every process still running as the run's uid (escaped the group or the namespace)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    log.error("sandbox: processes of uid %d survived %.0f s of SIGKILL", uid, timeout)


def _messages(data: bytes) -> list[dict[str, Any]]:
    """JSON objects, one a line; anything else (the code can write here too) is ignored."""
    out = []
    for line in data.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _result(
    proc: subprocess.Popen[bytes],
    mode: str,
    captures: dict[str, _Capture],
    killed: str | None,
    seconds: float,
    limits: Limits,
    want_value: bool,
) -> SandboxResult:
    ctl = _messages(bytes(captures["ctl"].data))
    for msg in ctl:
        if "setup_error" in msg:
            raise _SetupFailed(str(msg["setup_error"])[:500])
    cpu: float | None = None
    returncode: int | None = proc.returncode
    if mode == "namespace":
        returncode = None
        for msg in ctl:
            if isinstance(msg.get("status"), int):
                returncode = os.waitstatus_to_exitcode(msg["status"])
                cpu = float(msg.get("cpu_seconds", 0.0))
        if returncode is None and not killed:
            if proc.returncode != -signal.SIGALRM:
                tail = captures["stderr"].data.decode(errors="replace")[-500:]
                raise SandboxError(f"sandbox supervisor died (exit {proc.returncode}): {tail}")
            killed = "wall"  # the first stage's own backstop alarm: the parent was too slow
    if returncode is None and killed:
        returncode = -signal.SIGKILL

    chan = _messages(bytes(captures["channel"].data))
    blocked = list(dict.fromkeys(str(m["blocked"]) for m in chan if "blocked" in m))
    memory = any(m.get("memory") is True for m in chan)
    values = [m for m in chan if "result" in m or "result_error" in m]
    stdout = captures["stdout"].data.decode("utf-8", errors="replace")
    stderr = captures["stderr"].data.decode("utf-8", errors="replace")
    last_err = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    overflow = [c.name for c in captures.values() if c.overflow and c.name != "ctl"]
    cpu_limit = max(1, int(limits.cpu_seconds + 0.999))
    value_json: str | None = None

    status: Status
    if blocked:
        status, message = "blocked", "blocked: " + ", ".join(blocked[:5])
    elif killed == "output" or overflow:
        status = "output_limit"
        message = f"output limit {limits.output_bytes} bytes exceeded on {', '.join(overflow)}"
    elif killed == "wall":
        status, message = "timeout", f"wall time {limits.wall_seconds:g} s exceeded"
    elif returncode == -signal.SIGXCPU or (
        returncode == -signal.SIGKILL and (cpu is None or cpu >= cpu_limit - 0.05)
    ):
        status, message = "timeout", f"cpu time {cpu_limit} s exceeded"
    elif memory or last_err.startswith("MemoryError"):
        status, message = "memory", f"memory limit {limits.memory_mb:g} MB exceeded"
    elif returncode != 0:
        status, message = "error", f"exit code {returncode}: {last_err[:300]}"
    elif want_value:
        last = values[-1] if values else {}
        if "result" in last:
            status, message = "ok", "returned a value"
            value_json = json.dumps(last["result"])
        else:
            status = "error"
            message = str(last.get("result_error", "the function returned no value"))[:300]
    else:
        status, message = "ok", "exit code 0"
    return SandboxResult(
        status=status,
        stdout=stdout,
        stderr=stderr,
        returncode=returncode,
        message=message,
        seconds=round(seconds, 3),
        value_json=value_json,
        isolation=mode,
    )
