"""The HTTP control server: the API, health and readiness probes, metrics."""
