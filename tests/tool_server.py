# Copyright (c) galddc_mm contributors. All rights reserved.
"""A warm interpreter that runs the tools of the tests in forked children.

A ``python tools/train.py ...`` spends ~6 s of the 2-core CI machine
importing torch, mmengine and mmpretrain before it reads its config, and
the end-to-end tests start dozens of them. This server imports those once
and runs each tool in a child forked from it: the child runs the script
as ``__main__`` (``runpy``) in a process of its own, so exit statuses,
signals (a test's SIGKILL hook), ``atexit`` handlers and interpreter
shutdown are those of ``python script.py``; only the imports are shared.

It is started by :func:`conftest.run_tool` (set
``GALDDC_TESTS_TOOL_SERVER=0`` to run every tool in a fresh interpreter
instead). Requests and replies are one JSON object per line on the
server's stdin and stdout:

* request ``{"args": [script.py, ...], "env": {...}, "cwd": dir,
  "stdout": path, "stderr": path}``,
* replies ``{"pid": n}`` when the child is forked, then
  ``{"returncode": n}`` when it has ended (negative: killed by a signal,
  as ``subprocess`` reports it).
"""
import json
import os
import random
import runpy
import sys


def _child(request: dict, reply) -> None:
    """Become ``python <args>``: never returns to the server's loop."""
    reply.close()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request['stdout']), (2, request['stderr'])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    # What a fresh interpreter does: the script's folder, then PYTHONPATH,
    # first on the path, and a random state of its own.
    script = request['args'][0]
    sys.argv = list(request['args'])
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    extra = request['env'].get('PYTHONPATH', '').split(os.pathsep)
    extra = [p for p in extra if p]
    sys.path[1:] = extra + [p for p in sys.path[1:] if p not in extra]
    random.seed()
    import numpy as np
    np.random.seed()
    runpy.run_path(script, run_name='__main__')
    # The script returned: exit 0 as the interpreter would, through the
    # normal shutdown (SystemExit and exceptions propagate the same way).
    sys.exit(0)


def main() -> None:
    # Replies on a descriptor of their own: whatever an import prints to
    # stdout goes where stderr goes.
    reply = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)
    # What every tool imports; nothing runs, so no thread exists to fork.
    import mmengine  # noqa: F401
    import mmpretrain.models  # noqa: F401
    import torch  # noqa: F401

    import galddc_mm  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, reply)
        reply.write(json.dumps(dict(pid=pid)) + '\n')
        reply.flush()
        _, status = os.waitpid(pid, 0)
        reply.write(
            json.dumps(dict(returncode=os.waitstatus_to_exitcode(status))) +
            '\n')
        reply.flush()


if __name__ == '__main__':
    main()
