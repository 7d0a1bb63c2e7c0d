"""Child side of the sandbox: installs an audit hook, then runs the untrusted code.

Run as ``python -s -S -P -B -c <this source> JOB CHANNEL_FD WORKDIR`` by the first stage, as
the sandbox's unprivileged uid where the machine allows it; never imported.

The audit hook (PEP 578) refuses network access, process creation, ctypes, signals, rlimit
changes, writes outside WORKDIR and reads of a few secret-bearing paths, and reports each
refusal on the channel so the parent can answer "blocked". It is defence in depth, NOT a
security boundary: it runs inside the same interpreter as the code it watches, and audit hooks
are known to be bypassable (memory corruption, interpreter bugs, modules it does not know).
What holds is the operating-system layer set up before this file runs: rlimits, a fresh uid,
namespaces, a read-only filesystem and the process group / pid namespace that the parent kills.
"""

import _posixsubprocess
import json
import os
import sys
import traceback

_EXACT = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "pty.spawn",
        "resource.setrlimit",
        "resource.prlimit",
        # These hand out arbitrary live objects, e.g. this hook's closure, to tamper with.
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "urllib.Request",
        "http.client.connect",
        "ftplib.connect",
        "smtplib.connect",
        "poplib.connect",
        "imaplib.open",
        "nntplib.connect",
        "telnetlib.Telnet.open",
        "webbrowser.open",
        "sys.remote_exec",
    }
)
_PREFIXES = ("socket.", "subprocess.", "ctypes.", "_ctypes.", "os.exec", "os.spawn", "winreg.")
_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend"})
_PATH_EVENTS = frozenset(
    {
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.link",
        "os.truncate",
        "os.utime",
        "os.setxattr",
        "os.removexattr",
        "os.chflags",
        "os.lchflags",
        "shutil.rmtree",
        "shutil.move",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.copytree",
        "shutil.chown",
        "shutil.make_archive",
        "shutil.unpack_archive",
        "tempfile.mkstemp",
        "tempfile.mkdtemp",
        "sqlite3.connect",
    }
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_SECRET_READS = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/root", "/home", "/proc")
_MAX_REPORTS = 20
_AF_UNIX = 1


class SandboxViolation(PermissionError):
    """Raised by the audit hook; a PermissionError so ordinary error handling still works."""


def _install_hook(workdir: str, channel: int, readable: tuple[str, ...]) -> None:
    workdir = os.path.realpath(workdir)
    reports = [0]

    def under(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)

    def resolve(path: object) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return None
        return os.path.realpath(path)

    def refuse(event: str, what: object = "") -> None:
        try:
            label = f"{event} {what!r}"[:200] if what != "" else event
        except Exception:  # a hostile __repr__ must not break the refusal
            label = event
        if reports[0] < _MAX_REPORTS:  # a loop of refusals must not flood the channel
            reports[0] += 1
            try:
                os.write(channel, (json.dumps({"blocked": label}) + "\n").encode())
            except OSError:
                pass
        raise SandboxViolation(f"sandbox: {label} is not allowed")

    def writable(path: object) -> bool:
        if isinstance(path, int):
            return True  # an fd the process already holds
        real = resolve(path)
        return real is not None and under(real, (workdir,))

    def may_read(path: object) -> bool:
        if isinstance(path, int):
            return True
        real = resolve(path)
        if real is None:
            return False
        pid = os.getpid()
        own = (workdir, f"/proc/{pid}", "/proc/cpuinfo", "/proc/meminfo", *readable)
        if under(real, own):
            return True
        # The "open" event does not carry dir_fd: a directory fd from outside would let a
        # relative path that looks like it is in the working directory land anywhere.
        return not under(real, _SECRET_READS) and not os.path.isdir(real)

    def hook(event: str, args: tuple) -> None:
        if event == "socket.__new__" and len(args) > 1 and args[1] == _AF_UNIX:
            return  # socketpair() (asyncio's self-pipe); connect/bind/send stay refused
        if event in _EXACT or event.startswith(_PREFIXES):
            refuse(event)
        elif event == "import":
            if args[0] in _IMPORTS or args[0].split(".")[0] in _IMPORTS:
                refuse(event, args[0])
        elif event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
            if (writing and not writable(path)) or not may_read(path):
                refuse(event, args[0])
        elif event in _PATH_EVENTS:
            paths = [a for a in args if isinstance(a, (str, bytes))]
            if event == "sqlite3.connect" and paths and paths[0] in (":memory:", ""):
                return
            if not all(writable(p) for p in paths):
                refuse(event, paths[0] if len(paths) == 1 else tuple(paths))
        elif event == "os.symlink":
            if not writable(args[1]):  # args[0] is the link's target, which may be anywhere
                refuse(event, args[1])
        elif event == "object.__setattr__" and any(args[0] is f for f in protected):
            refuse(event, args[1])

    # Swapping the code of the hook or its helpers would disarm it (other functions are free
    # to change theirs: types.coroutine does).
    protected = (hook, refuse, writable, may_read, resolve, under)

    # subprocess (and so asyncio) imports _posixsubprocess, whose fork_exec raises no audit
    # event: keep the module importable but its fork_exec refusing. The import above is the
    # only one allowed; the hook refuses any re-import (which would bring back the original).
    _posixsubprocess.fork_exec = lambda *args, **kwargs: refuse("_posixsubprocess.fork_exec")
    sys.addaudithook(hook)


def _report(channel: int, obj: dict) -> None:
    _write(channel, json.dumps(obj))


def _write(channel: int, line: str) -> None:
    data = (line + "\n").encode()
    try:
        while data:
            data = data[os.write(channel, data) :]
    except OSError:
        pass


def _main() -> int:
    job_path, channel, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    if job["audit_hook"]:
        readable = tuple(os.path.realpath(p) for p in {sys.prefix, sys.exec_prefix})
        _install_hook(workdir, channel, readable)
    sys.argv = ["<sandbox>"]
    source = job["code"]
    name = "__main__" if job["function"] is None else "__sandbox__"
    namespace = {"__name__": name, "__builtins__": __builtins__}
    try:
        import linecache

        # Tracebacks then show the failing line of the untrusted code.
        linecache.cache["<sandbox>"] = (len(source), None, source.splitlines(True), "<sandbox>")
        exec(compile(source, "<sandbox>", "exec"), namespace)
        if job["function"] is not None:
            _call(job, namespace, channel)
    except MemoryError:
        _report(channel, {"memory": True})
        traceback.print_exc()
        return 1
    except SystemExit:
        raise
    except BaseException:  # any failure of the untrusted code is reported as such
        traceback.print_exc()
        return 1
    return 0


def _call(job: dict, namespace: dict, channel: int) -> None:
    fn = namespace.get(job["function"])
    if not callable(fn):
        _report(channel, {"result_error": f"{job['function']!r} is not a function in the code"})
        return
    value = fn(*job["args"], **job["kwargs"])
    try:
        line = json.dumps({"result": value})
    except (TypeError, ValueError) as exc:
        _report(channel, {"result_error": f"return value is not JSON-serialisable: {exc}"})
        return
    _write(channel, line)


if __name__ == "__main__":
    code = _main()
    sys.stdout.flush()
    sys.exit(code)
