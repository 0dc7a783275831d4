"""The load test, ``gconnect loadtest``: locust users holding CONNECT tunnels to an echo target.

An operations tool, not part of the proxy: it drives any CONNECT proxy by its address (or starts
a gconnect of its own, as a child process) and never imports the data path. Its pieces:

- ``run``: the runner: starts the target, the proxy and locust as processes, samples them, reports;
- ``locustfile``: the locust users (loaded by locust itself; the only module that imports locust);
- ``target``: the echo and sink server, ``python -m gconnect.loadtest.target``;
- ``wire``: one tunnel's request, answer and echo, and the failure reasons;
- ``machine``, ``report``: the /proc samples, and the summary.

Locust is in the ``load`` extra (``pip install 'gconnect[load]'``).
"""
