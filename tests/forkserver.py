"""A fork server for the CLI: import kdeploy (and torch) once, then run each command in a forked child.

Each command gets its own process: its own working folder, environment, stdout/stderr file descriptors
(redirected with ``dup2``, so C-level writes are captured too) and exit status, exactly as the
``kdeploy`` console script would produce them (it calls the same ``kdeploy.cli:app``). Only the interpreter
start and the imports (about 2 s of CPU for torch) are paid once instead of once per case.

Protocol: one JSON request per stdin line ``{"argv", "cwd", "env", "stdout", "stderr"}``; answers one JSON
line ``{"pid"}`` when the child starts and one ``{"returncode"}`` when it ends. Run as a fresh process
(``python tests/forkserver.py``) before any computation, so no thread pool exists at fork time.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings


def _child(request: dict) -> int:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = extra
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = open(os.devnull)  # noqa: SIM115
    from kdeploy.cli import app

    sys.argv = ["kdeploy", *request["argv"]]
    try:
        app(prog_name="kdeploy")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # an escaped exception is printed like the interpreter would, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve() -> None:
    for module in ("kdeploy.cli", "kdeploy.distill.run", "kdeploy.recipe"):  # what every child shares after fork
        importlib.import_module(module)

    reply = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), file=reply, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=reply, flush=True)


if __name__ == "__main__":
    serve()
