"""The incident log: Alertmanager webhook (v4) in, alert history out."""
