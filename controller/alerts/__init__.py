"""Alerts without Prometheus: the rules of `controller/metrics/rules.yml`, evaluated here."""
