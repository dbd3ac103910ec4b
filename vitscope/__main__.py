import signal
import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C before the command line is even read: said as main() says it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exec("None")  # CPython's note of an unhandled KeyboardInterrupt, cleared (see cli.forget_caught_interrupt)
    print("vitscope: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
