"""Threat tests of the sandbox: real subprocesses, no mocks.

Each hostile program must end with its specific status and leave the calling process, the
filesystem and the process table as they were. With ``audit_hook=False`` the same programs test
the operating-system layers alone (namespaces, fresh uid, rlimits): those tests need namespace
isolation (root with CAP_SYS_ADMIN) and are skipped elsewhere.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import reasonloop
from reasonloop.sandbox import (
    SANDBOX_UIDS,
    Limits,
    SandboxError,
    SandboxResult,
    isolation_mode,
    processes_of_uid,
    run_code,
    run_function,
)

FAST = Limits(cpu_seconds=1, wall_seconds=5, memory_mb=256, output_bytes=64_000, processes=16)
SHORT_WALL = Limits(cpu_seconds=5, wall_seconds=2, memory_mb=256, output_bytes=64_000)
NAMESPACE = isolation_mode() == "namespace"
needs_namespace = pytest.mark.skipif(
    not NAMESPACE, reason="OS-layer tests need namespace isolation (root with CAP_SYS_ADMIN)"
)
REPO = Path(reasonloop.__file__).resolve().parents[1]
SECRET = "sk-secret-test"
BOMB = "import os\nprint(os.getuid(), flush=True)\nwhile True:\n    os.fork()\n"


def run(code: str, limits: Limits = FAST, **kwargs: object) -> SandboxResult:
    return run_code(code, limits=limits, **kwargs)  # type: ignore[arg-type]


def first_int(text: str) -> int:
    return int(text.split()[0])


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (field 5 of /proc/PID/stat)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                out.append(int(entry))
    return out


def assert_no_survivors(uid: int) -> None:
    if uid in SANDBOX_UIDS:
        assert processes_of_uid(uid) == []


@pytest.fixture
def server() -> Iterator[tuple[int, list[object]]]:
    """A real listening TCP server on 127.0.0.1; yields its port and the peers it accepted."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.05)
    seen: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except TimeoutError:
                continue
            seen.append(peer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    # Control: the server does see an ordinary connection, so "saw none" below means something.
    socket.create_connection(srv.getsockname(), timeout=2).close()
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen) == 1
    seen.clear()
    yield srv.getsockname()[1], seen
    stop.set()
    thread.join()
    srv.close()


@pytest.fixture
def outside_paths(tmp_path: Path) -> Iterator[list[Path]]:
    """Fresh paths outside the sandbox: the parent's HOME, /tmp, the repository."""
    name = f"sandbox-pwned-{uuid.uuid4().hex}"
    paths = [Path.home() / name, Path("/tmp") / name, REPO / name, tmp_path / name]
    yield paths
    for p in paths:
        p.unlink(missing_ok=True)


# --- normal programs ------------------------------------------------------------------------


def test_normal_program_computes_and_prints() -> None:
    code = (
        "import sys\n"
        "n = int(sys.stdin.read())\n"
        "primes = [p for p in range(2, n) if all(p % d for d in range(2, int(p**0.5) + 1))]\n"
        "print(len(primes), sum(primes))\n"
    )
    n = 5000
    primes = [p for p in range(2, n) if all(p % d for d in range(2, int(p**0.5) + 1))]
    r = run(code, stdin=str(n))
    assert r.status == "ok", r
    assert r.stdout == f"{len(primes)} {sum(primes)}\n"
    assert r.returncode == 0 and r.stderr == ""


def test_run_function_returns_value_on_its_own_channel() -> None:
    code = (
        "def gold(xs, k=1):\n"
        "    print('noise that must not disturb the value')\n"
        "    return {'total': sum(xs) * k, 'sorted': sorted(xs), 'none': None}\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('a __main__ guard must not run')\n"
    )
    xs = [5, -3, 11, 0]
    r = run_function(code, "gold", [xs], {"k": 3}, limits=FAST)
    assert r.status == "ok", r
    assert r.value == {"total": sum(xs) * 3, "sorted": sorted(xs), "none": None}
    assert "noise" in r.stdout


def test_run_function_failures_are_errors() -> None:
    r = run_function("def f():\n    return {1, 2}\n", "f", limits=FAST)
    assert r.status == "error" and "JSON" in r.message
    with pytest.raises(ValueError):
        _ = r.value
    assert run_function("x = 1\n", "f", limits=FAST).status == "error"
    r = run_function("def f(a):\n    return 1 // a\n", "f", [0], limits=FAST)
    assert r.status == "error" and "ZeroDivisionError" in r.message
    r = run_function("import os\ndef f():\n    return os.system('true')\n", "f", limits=FAST)
    assert r.status == "blocked"
    with pytest.raises(TypeError):
        run_function("def f(x):\n    return x\n", "f", [object()], limits=FAST)


def test_errors_and_exit_codes() -> None:
    r = run("print('before')\n1 / 0\n")
    assert r.status == "error" and r.returncode == 1
    assert "ZeroDivisionError" in r.message and r.stdout == "before\n"
    r = run("import sys\nsys.exit(3)\n")
    assert r.status == "error" and r.returncode == 3


def test_hash_seed_fixed_and_cwd_is_private_temp_dir() -> None:
    code = (
        "import os\n"
        "open('scratch.txt', 'w').write('mine')\n"
        "print(hash('reasonloop'), list({'a', 'b', 'c', 'd'}), os.getcwd() == os.environ['HOME'])\n"
        "print(os.getcwd())\n"
    )
    first, second = run(code), run(code)
    assert first.status == second.status == "ok", (first, second)
    assert first.stdout.splitlines()[0] == second.stdout.splitlines()[0]
    assert first.stdout.splitlines()[0].endswith("True")
    for r in (first, second):
        workdir = Path(r.stdout.splitlines()[1])
        assert workdir.name == "work" and not workdir.parent.exists()  # removed afterwards


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        Limits(cpu_seconds=0)
    with pytest.raises(ValueError):
        Limits(memory_mb=-1)


# --- resource exhaustion ----------------------------------------------------------------------


def test_fork_bomb_is_blocked_and_nothing_survives() -> None:
    r = run(
        "import os\nprint(os.getuid(), os.getpgid(0), flush=True)\nwhile True:\n    os.fork()\n"
    )
    assert r.status == "blocked" and "os.fork" in r.message, r
    uid, pgid = (int(x) for x in r.stdout.split())
    assert_no_survivors(uid)
    if pgid:  # 0 inside a pid namespace, where the group leader is not visible
        assert group_members(pgid) == []


@needs_namespace
def test_fork_bomb_without_hook_is_capped_by_nproc_and_reaped() -> None:
    code = (
        "import os, time\n"
        "print(os.getuid(), flush=True)\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            while True:\n"
        "                try:\n"
        "                    os.fork()\n"
        "                except OSError:\n"
        "                    time.sleep(0.05)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    print('capped', n, flush=True)\n"
        "time.sleep(100)\n"
    )
    r = run(code, SHORT_WALL, audit_hook=False)
    assert r.status == "timeout" and "wall" in r.message, r
    lines = r.stdout.split("\n")
    uid = first_int(lines[0])
    assert uid in SANDBOX_UIDS
    assert lines[1].startswith("capped ") and int(lines[1].split()[1]) < SHORT_WALL.processes
    assert processes_of_uid(uid) == []


@needs_namespace
def test_setsid_daemon_cannot_outlive_the_run() -> None:
    code = (
        "import os, time\n"
        "print(os.getuid(), flush=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
    )
    r = run(code, audit_hook=False)
    assert r.status == "ok", r
    assert processes_of_uid(first_int(r.stdout)) == []


@pytest.mark.parametrize(
    "code",
    ["x = 'a' * 10**10\n", "x = []\nwhile True:\n    x.append(' ' * 10**6)\n"],
    ids=["huge-string", "growing-list"],
)
def test_memory_bomb(code: str) -> None:
    # Faulting in 256 MB costs kernel CPU time: with 1 CPU second a loaded machine can hit the CPU
    # limit first; with room on the CPU, the memory limit is the one this test reaches.
    r = run(code, Limits(cpu_seconds=5, wall_seconds=10, memory_mb=256, output_bytes=64_000))
    assert r.status == "memory" and "256 MB" in r.message, r


def test_cpu_loop_hits_cpu_limit() -> None:
    r = run("while True:\n    pass\n", Limits(cpu_seconds=1, wall_seconds=20, memory_mb=256))
    assert r.status == "timeout" and "cpu" in r.message, r
    assert r.seconds < 10


def test_sleep_hits_wall_limit() -> None:
    r = run("import time\ntime.sleep(100)\n", SHORT_WALL)
    assert r.status == "timeout" and r.message == "wall time 2 s exceeded", r
    assert 1.9 <= r.seconds < 5


@pytest.mark.parametrize(
    "code",
    ["print('x' * 10**8)\n", "while True:\n    print('x' * 1000)\n"],
    ids=["one-huge-print", "print-loop"],
)
def test_huge_output_is_cut_without_buffering(code: str) -> None:
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limits = Limits(cpu_seconds=5, wall_seconds=10, memory_mb=512, output_bytes=100_000)
    r = run(code, limits)
    assert r.status == "output_limit", r
    assert len(r.stdout) == limits.output_bytes
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kb < 50_000  # the 100 MB print was never held by the parent


def test_giant_string_print_dies_on_memory_first() -> None:
    # 'x' * 10**9 needs 1 GB before a byte is printed: the address-space limit stops it.
    assert run("print('x' * 10**9)\n").status == "memory"


def test_disk_writes_are_capped() -> None:
    limits = Limits(cpu_seconds=5, wall_seconds=10, memory_mb=256, disk_mb=8)
    r = run("open('big', 'wb').write(b'x' * (100 * 2**20))\n", limits)
    assert r.status == "error" and ("File too large" in r.message or "space" in r.message), r


# --- network ----------------------------------------------------------------------------------


def test_socket_connect_is_blocked(server: tuple[int, list[object]]) -> None:
    port, seen = server
    r = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n")
    assert r.status == "blocked" and "socket" in r.message, r
    time.sleep(0.1)
    assert seen == []


@needs_namespace
def test_socket_connect_without_hook_has_no_network(server: tuple[int, list[object]]) -> None:
    port, seen = server
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(1)\n"
        f"print(s.connect_ex(('127.0.0.1', {port})))\n"
        "print(socket.if_nameindex())\n"
    )
    r = run(code, audit_hook=False)
    assert r.status == "ok", r
    errno_line, interfaces = r.stdout.splitlines()
    assert int(errno_line) != 0  # ENETUNREACH: the new namespace's loopback is down
    assert "eth" not in interfaces and "ens" not in interfaces
    time.sleep(0.1)
    assert seen == []


# --- filesystem -------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", [True, False], ids=["hook", "os-layer"])
def test_writes_outside_the_sandbox_fail(hook: bool, outside_paths: list[Path]) -> None:
    if not hook and not NAMESPACE:
        pytest.skip("needs namespace isolation")
    for path in outside_paths:
        r = run(f"open({str(path)!r}, 'w').write('pwned')\n", audit_hook=hook)
        assert r.status == ("blocked" if hook else "error"), (path, r)
        assert not path.exists(), path


@pytest.mark.parametrize("hook", [True, False], ids=["hook", "os-layer"])
def test_deleting_outside_files_fails(hook: bool, tmp_path: Path) -> None:
    if not hook and not NAMESPACE:
        pytest.skip("needs namespace isolation")
    victims = [tmp_path / "victim.txt", REPO / "pyproject.toml"]
    victims[0].write_text("keep me")
    for victim in victims:
        r = run(f"import os\nos.remove({str(victim)!r})\n", audit_hook=hook)
        assert r.status == ("blocked" if hook else "error"), (victim, r)
        assert victim.exists()


@pytest.mark.parametrize("hook", [True, False], ids=["hook", "os-layer"])
def test_reading_etc_shadow_fails(hook: bool) -> None:
    if not hook and not NAMESPACE:
        pytest.skip("needs namespace isolation")
    r = run("print(open('/etc/shadow').read())\n", audit_hook=hook)
    assert r.status == ("blocked" if hook else "error"), r
    assert "root:" not in r.stdout


# --- secrets ----------------------------------------------------------------------------------


def test_environment_secrets_are_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert os.environ["OPENAI_API_KEY"] == SECRET
    r = run("import os\nprint(dict(os.environ))\n")
    assert r.status == "ok", r
    assert SECRET not in r.stdout and "OPENAI_API_KEY" not in r.stdout
    env = eval(r.stdout)  # our own test output: a dict literal
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONHASHSEED"}


@pytest.mark.parametrize("hook", [True, False], ids=["hook", "os-layer"])
def test_secrets_of_other_processes_are_unreadable(
    hook: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hook and not NAMESPACE:
        pytest.skip("needs namespace isolation")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    code = (
        "import os\n"
        "for pid in [os.getppid(), 1] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
        f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
    )
    r = run(code, audit_hook=hook)
    assert SECRET not in r.stdout
    assert r.status == ("blocked" if hook else "error"), r


# --- process creation, code loading, signals --------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "import os\nos.system('echo pwned > {target}')\n",
        "import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > {target}'])\n",
        "import ctypes\nctypes.CDLL(None).system(b'echo pwned > {target}')\n",
        "__import__('os').execv('/bin/sh', ['sh', '-c', 'echo pwned > {target}'])\n",
        "import _posixsubprocess\n_posixsubprocess.fork_exec()\n",
    ],
    ids=["os.system", "subprocess.run", "ctypes", "execv", "_posixsubprocess"],
)
def test_process_creation_is_blocked(template: str, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    r = run(template.format(target=target))
    assert r.status == "blocked", r
    assert not target.exists()


@needs_namespace
@pytest.mark.parametrize(
    "template",
    [
        "import os\nos.system('id -u; echo pwned > {target}')\n",
        "import ctypes\nctypes.CDLL(None).system(b'id -u; echo pwned > {target}')\n",
    ],
    ids=["os.system", "ctypes"],
)
def test_shell_without_hook_runs_powerless(template: str, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    r = run(template.format(target=target), audit_hook=False)
    assert r.status == "ok", r
    assert first_int(r.stdout) in SANDBOX_UIDS  # not root
    assert not target.exists()


@pytest.mark.parametrize("hook", [True, False], ids=["hook", "os-layer"])
def test_signals_cannot_reach_the_parent(hook: bool) -> None:
    if not hook and not NAMESPACE:
        pytest.skip("needs namespace isolation")
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        for code in ["import os\nos.kill(os.getppid(), 9)\n", "import os\nos.kill(-1, 9)\n"]:
            r = run(code, audit_hook=hook)
            assert r.status == ("blocked" if hook else "error"), (code, r)
        assert bystander.poll() is None  # a host process of the caller's uid, untouched
    finally:
        bystander.kill()
        bystander.wait()


def test_audit_hook_cannot_be_disarmed_through_gc() -> None:
    r = run("import gc\nprint(len(gc.get_objects()))\n")
    assert r.status == "blocked" and "gc.get_objects" in r.message


# --- isolation modes and concurrency ----------------------------------------------------------


def test_plain_isolation_still_refuses_the_basics(
    server: tuple[int, list[object]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port, seen = server
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    target = tmp_path / "pwned"
    expected = {
        "print(6 * 7)\n": "ok",
        "import os\nos.fork()\n": "blocked",
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n": "blocked",
        f"open({str(target)!r}, 'w')\n": "blocked",
        "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n": "blocked",
    }
    for code, status in expected.items():
        r = run(code, isolation="plain")
        assert r.isolation == "plain"
        assert r.status == status, (code, r)
        assert SECRET not in r.stdout
    assert seen == [] and not target.exists()


def test_namespace_request_fails_loudly_where_unavailable() -> None:
    if NAMESPACE:
        assert run("print(1)\n", isolation="namespace").isolation == "namespace"
    else:
        with pytest.raises(SandboxError):
            run("print(1)\n", isolation="namespace")


def test_twenty_threats_from_four_threads_and_the_loop_keeps_running(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "pwned"
    threats: list[tuple[str, str, Limits]] = [
        (BOMB, "blocked", FAST),
        ("x = 'a' * 10**10\n", "memory", FAST),
        ("x = []\nwhile True:\n    x.append(' ' * 10**6)\n", "memory", FAST),
        ("while True:\n    pass\n", "timeout", FAST),
        ("import time\ntime.sleep(100)\n", "timeout", SHORT_WALL),
        ("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", "blocked", FAST),
        (f"open({str(target)!r}, 'w')\n", "blocked", FAST),
        (f"open({str(Path.home() / 'pwned')!r}, 'w')\n", "blocked", FAST),
        ("import os\nprint(dict(os.environ))\n", "ok", FAST),
        ("while True:\n    print('x' * 1000)\n", "output_limit", FAST),
        (f"import os\nos.system('echo > {target}')\n", "blocked", FAST),
        ("import subprocess\nsubprocess.run(['id'])\n", "blocked", FAST),
        ("import ctypes\nctypes.CDLL(None).system(b'id')\n", "blocked", FAST),
        ("import os\nos.execv('/bin/sh', ['sh'])\n", "blocked", FAST),
        ("print(open('/etc/shadow').read())\n", "blocked", FAST),
        (f"import os\nos.remove({str(victim)!r})\n", "blocked", FAST),
        ("import os\nos.kill(os.getppid(), 9)\n", "blocked", FAST),
        ("1 / 0\n", "error", FAST),
        ("import sys\nsys.exit(3)\n", "error", FAST),
        ("import os\nprint(os.getcwd())\nprint(sum(i * i for i in range(1000)))\n", "ok", FAST),
    ]
    assert len(threats) == 20
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: run(t[0], t[2]), threats))
    for (code, status, _), r in zip(threats, results, strict=True):
        assert r.status == status, (code, r)
    workdir, total = results[-1].stdout.splitlines()
    assert int(total) == sum(i * i for i in range(1000))
    assert not Path(workdir).parent.exists()
    assert victim.read_text() == "keep" and not target.exists()
    assert_no_survivors(first_int(results[0].stdout))
    # The loop keeps running: the same process still sandboxes normally.
    after = run_function("def f(n):\n    return n * 2\n", "f", [21], limits=FAST)
    assert after.status == "ok" and after.value == 42
