"""The live service: follow growing acquisition files and publish every frame over ZeroMQ.

``config`` (settings) and ``metrics`` sit beside four packages that each do one job:
``live`` (discover runs, follow them, publish their frames), ``jobs`` (conversions),
``state`` (the registry of runs and jobs) and ``control`` (the HTTP API and probes);
``app`` wires them together and :func:`stemcast.service.app.serve` runs them.
"""
