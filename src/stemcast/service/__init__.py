"""The live service: follow growing acquisition files and publish every frame over ZeroMQ.

``config`` (settings), ``discovery`` (new runs), ``tail`` (follow one run), ``protocol``
(message headers), ``publish`` (ZeroMQ sockets) and ``app`` (the daemon) each do one job;
:func:`stemcast.service.app.serve` runs them together.
"""
