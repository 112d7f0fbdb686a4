"""Set resource limits, then become the command: ``python -I -S rlimit_exec.py NAME=N... -- ARGV``.

run.py starts a check through this file when its configuration has ``limits``: limits set here
are inherited by everything the check starts, and the check itself never runs hyperion code.
(``preexec_fn`` would do the same from the daemon's own process, which is not safe with
threads running.) Only the standard library, and nothing imported from hyperion, so that the
interpreter starts in a few milliseconds with ``-S``.
"""

import os
import resource
import sys

_NAMES = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "nofile": resource.RLIMIT_NOFILE,
}


def main(args: list[str]) -> int:
    split = args.index("--")
    for item in args[:split]:
        name, _, value = item.partition("=")
        which = _NAMES[name]
        wanted = int(value)
        _, hard = resource.getrlimit(which)
        ceiling = hard if hard != resource.RLIM_INFINITY else wanted + 1
        # A CPU soft limit sends SIGXCPU; one more second of hard limit then SIGKILL.
        soft = min(wanted, ceiling)
        new_hard = min(wanted + 1 if which == resource.RLIMIT_CPU else wanted, ceiling)
        resource.setrlimit(which, (soft, max(soft, new_hard)))
    argv = args[split + 1:]
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"[hyperion: could not start {argv[0]}: {exc.strerror}]\n")
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
