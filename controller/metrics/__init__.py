"""Prometheus metrics of the controller and, through telemetry, of every box; alert rules."""
