"""python -m bench.profiled OUT PYTHON -m MODULE ARGS...: run ``python -m MODULE ARGS`` under
cProfile and write its stats to OUT when it exits (SIGTERM included: a program that does not
handle it gets SystemExit here). The PYTHON word is the interpreter a harness put before ``-m``
(``bench.forward.start_proxy``'s *prefix* is put before the whole command); it is skipped.

For call counts (how many times each Python function ran), not times: the profiler costs each
call far more than the call itself, and greenlet switches confuse its clocks.
"""

import cProfile
import runpy
import signal
import sys


def main() -> None:
    out, _python, dash_m, module, *args = sys.argv[1:]
    if dash_m != "-m":
        raise SystemExit("usage: python -m bench.profiled OUT PYTHON -m MODULE ARGS...")
    sys.argv = [module, *args]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    profile = cProfile.Profile()
    profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
