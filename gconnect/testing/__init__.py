"""What gconnect's tests, its benchmarks (bench/) and load tests share: the proxy started as a user
starts it (``process``), a DNS server on loopback (``dns``), and what /proc says about a process
(``procfs``).

It lives in the package, as ``trio.testing`` does, so that a checkout's tests and bench/ and an
installed ``gconnect`` import the same code without a path hack. It imports nothing from gconnect's
data path: it starts processes, serves DNS on loopback and reads /proc, nothing more.
"""
