"""First stage of the sandbox: trusted code that sets up isolation, then runs the bootstrap.

Run by the parent as ``python -I -S -B -c <this source> CONFIG_JSON_PATH``; never imported (the
parent reads this file as text, so it works wherever the package is installed and needs no
import path in the child). It runs with the parent's privileges, before any untrusted code.

Two modes, chosen by the parent:

- ``namespace`` (parent is root with CAP_SYS_ADMIN): unshare new mount, network, pid, IPC and
  UTS namespaces; make the whole filesystem read-only and nosuid in the new mount namespace;
  hide /root, /home, /tmp, /run, ... behind empty tmpfs (keeping only the interpreter and the
  sandbox directory); mount a small private tmpfs as the working directory; then fork a pid-1
  ``init`` that mounts a fresh /proc and forks the user process, which sets rlimits, drops to a
  fresh unprivileged uid, sets no_new_privs and execs the bootstrap. When init exits, the kernel
  kills every process left in the pid namespace, so nothing can outlive a run.
- ``plain`` (fallback): set rlimits, drop to a fresh uid when allowed, exec the bootstrap.

Trusted status (exit status and CPU time of the user process, setup errors) goes back to the
parent on the CTL pipe, which the untrusted process never holds.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import signal
import sys
from typing import Any, NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

# Options in /proc/self/mountinfo that must survive a bind remount (the kernel resets the
# per-mount flags that are not passed again).
_KEEP_FLAGS = {
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}

# The untrusted process runs the interpreter with -I minus -E: its environment is built from
# scratch by the parent, and -E would ignore the PYTHONHASHSEED that keeps set order fixed.
USER_PYTHON_FLAGS = ("-s", "-S", "-P", "-B")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def _send(fd: int, obj: dict[str, Any]) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _mountpoints() -> list[tuple[str, set[str]]]:
    """Mount points of this mount namespace with their per-mount options."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, set(fields[5].split(","))))
    return out


def _cover(directory: str, keep: list[str]) -> None:
    """Hide `directory` behind an empty tmpfs, binding back only the paths in `keep` below it."""
    # O_PATH handles taken before the tmpfs goes on top are the only way back to what it hides.
    handles = [(path, os.open(path, os.O_PATH)) for path in keep if _under(path, directory)]
    _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m,nr_inodes=1000")
    for path, fd in handles:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)


def _isolate_filesystem(cfg: dict[str, Any]) -> None:
    # Private first: without it, the mounts below would propagate back to the host.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for directory in cfg["cover"]:
        _cover(directory, cfg["keep"])
    workdir = cfg["workdir"]
    uid = cfg["uid"]
    _mount(
        "tmpfs",
        workdir,
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"mode=700,uid={uid},gid={uid},size={cfg['disk_bytes']},nr_inodes=10000",
    )
    for point, options in _mountpoints():
        if point == workdir:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
        for name, flag in _KEEP_FLAGS.items():
            if name in options:
                flags |= flag
        try:
            _mount(None, point, None, flags)
        except FileNotFoundError:
            # A mount below a covered directory: hidden under the tmpfs, out of reach.
            if not any(_under(point, d) for d in cfg["cover"]):
                raise


def _set_limits(cfg: dict[str, Any], nproc: int | None) -> None:
    cpu = int(cfg["cpu_seconds"])
    # Soft limit: SIGXCPU (reported as a cpu timeout); hard limit: SIGKILL if SIGXCPU is caught.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["disk_bytes"], cfg["disk_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _exec_user(cfg: dict[str, Any]) -> NoReturn:
    # no_new_privs: a setuid binary (su, sudo, ping) can never give root back.
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.chdir(cfg["workdir"])
    python = cfg["python"]
    argv = [python, *USER_PYTHON_FLAGS, "-c", cfg["bootstrap"], cfg["job"]]
    argv += [str(cfg["channel_fd"]), cfg["workdir"]]
    os.execve(python, argv, cfg["env"])


def _start_failed(cfg: dict[str, Any], exc: BaseException) -> NoReturn:
    # The CTL pipe is still open here (it closes only on exec): the parent learns that the
    # sandbox, not the code, failed.
    try:
        _send(cfg["ctl_fd"], {"setup_error": f"could not start the code: {exc!r}"})
    finally:
        os._exit(71)


def _user_process(cfg: dict[str, Any]) -> NoReturn:
    try:
        _set_limits(cfg, cfg["processes"])
        _drop_privileges(cfg["uid"])
        # After the uid change: changing credentials clears the parent-death signal.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _exec_user(cfg)
    except BaseException as exc:  # any failure here must not run user code
        _start_failed(cfg, exc)


def _init(cfg: dict[str, Any], ctl: int) -> NoReturn:
    """Pid 1 of the new pid namespace: start the user process, reap, report, exit."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # A fresh /proc shows only this namespace: no host processes, no parent environ.
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        child = os.fork()
        if child == 0:
            _user_process(cfg)
        while True:
            try:
                pid, status, usage = os.wait4(-1, 0)
            except ChildProcessError:
                os._exit(0)
            if pid == child:
                cpu = usage.ru_utime + usage.ru_stime
                _send(ctl, {"status": status, "cpu_seconds": cpu})
                # Exiting pid 1 makes the kernel kill everything left in the namespace.
                os._exit(0)
    except BaseException as exc:  # report and die, whatever happened
        try:
            _send(ctl, {"setup_error": f"init: {exc!r}"})
        finally:
            os._exit(70)


def _namespace_main(cfg: dict[str, Any], ctl: int) -> NoReturn:
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        _check(_libc.unshare(flags), "unshare")
        _isolate_filesystem(cfg)
    except BaseException as exc:  # the parent decides what a failure means
        _send(ctl, {"setup_error": repr(exc)})
        os._exit(70)
    # Backstop if the parent is stopped but alive: never outlive the wall limit by much.
    signal.alarm(int(cfg["wall_seconds"]) + 5)
    pid = os.fork()
    if pid == 0:
        _init(cfg, ctl)
    os.waitpid(pid, 0)
    os._exit(0)


def _count_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _plain_main(cfg: dict[str, Any]) -> NoReturn:
    uid = cfg["uid"]
    try:
        if uid is not None:
            nproc = cfg["processes"]
        elif os.geteuid() != 0:
            # RLIMIT_NPROC counts every process of the uid, the caller's own included.
            nproc = _count_processes(os.geteuid()) + cfg["processes"]
        else:
            nproc = None  # root ignores RLIMIT_NPROC; only the process group holds
        _set_limits(cfg, nproc)
        if uid is not None:
            _drop_privileges(uid)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _exec_user(cfg)
    except BaseException as exc:  # any failure here must not run user code
        _start_failed(cfg, exc)


def main() -> NoReturn:
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    ctl = cfg["ctl_fd"]
    os.set_inheritable(ctl, False)
    if cfg["mode"] == "namespace":
        _namespace_main(cfg, ctl)
    _plain_main(cfg)


if __name__ == "__main__":
    main()
