"""Plain HTTP forwarding: ``http://`` URLs in absolute form, request by request.

The message layer is sans I/O and has one job per module: :mod:`.fields`
(what the header section says about framing and connection options),
:mod:`.request` and :mod:`.response` (the two heads, strictly, with llhttp),
:mod:`.body` (body framing as a streaming state machine), :mod:`.render` (the
heads we send on, without hop-by-hop fields). The I/O lives beside them.
"""
