"""``python -m gconnect`` and the ``gconnect`` console script.

gevent's monkey-patching must come before anything imports socket, ssl,
selectors or dnspython, so it is the first thing this module does.
"""

from gevent import monkey

monkey.patch_all()

from gconnect.ops.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
