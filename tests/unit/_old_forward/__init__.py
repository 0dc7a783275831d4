"""The forwarding heads as they were before they were read in one pass (commit
16a91cb: llhttp calling back per field), kept frozen as the oracle of
tests/unit/test_forward_heads_differential.py: fields.py, request.py,
response.py and render.py of gconnect/tunnel/forward/ at that commit, the
relative imports that leave the package made absolute, nothing else changed.

A copy rather than ``git show`` at collection: a unit test may not start a
process (tests/unit/conftest.py), and a checkout without that history would
lose the oracle. Never edited to follow the current code: that is what it is
held against.
"""
