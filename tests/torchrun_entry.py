"""`reasonloop` for tests/test_torchrun.py, launched by torchrun: the real command line, except
that every rank but 0 dies (exit 3, naming the path) at its first write inside the run
directory (`--out`), caught by an audit hook on opening for writing, renaming, removing and
making directories. The loop promises that only rank 0 writes there.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/torchrun_entry.py \\
        run --out RUN ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from reasonloop.cli import main

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"}


def _guard(root: Path) -> None:
    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, flags = args[0], args[2]
            writes = isinstance(flags, int) and bool(flags & WRITE_FLAGS)
        elif event in CHANGES:
            path, writes = args[0], True
        else:
            return
        if not writes or not isinstance(path, (str, bytes, os.PathLike)):
            return
        p = Path(os.fsdecode(path)).absolute()
        if p == root or root in p.parents:
            sys.stderr.write(f"rank {os.environ['RANK']} wrote in the run directory: {p}\n")
            sys.stderr.flush()
            os._exit(3)

    sys.addaudithook(hook)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if os.environ.get("RANK", "0") != "0":
        _guard(Path(argv[argv.index("--out") + 1]).absolute())
    sys.exit(main(argv))
