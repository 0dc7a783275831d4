"""HTTP/2 as one more kind of client side, reached only through the ALPN table.

:class:`~gconnect.tunnel.h2.session.H2Protocol` is what the composition root
puts in the services' ``protocols`` table under ``"h2"``; nothing on the
HTTP/1.1 path imports this package.
"""

from .session import H2Protocol

__all__ = ["H2Protocol"]
