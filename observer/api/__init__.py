"""``observer serve``'s HTTP surface: one router per area, assembled by :func:`observer.server.create_app`.

- :mod:`.otlp`: ``POST /v1/traces`` (OTLP/HTTP ingestion),
- :mod:`.analytics`: ``GET /api/v1/requests`` and ``GET /api/v1/analytics/*``,
- :mod:`.feedback`: ``POST /api/v1/feedback``,
- :mod:`.alerts`: ``POST /api/v1/alerts/webhook`` and ``GET /api/v1/alerts``,
- :mod:`.health`: ``GET /healthz`` and ``GET /metrics``.

Every router reads the shared objects (store, collector, analytics, settings) from :class:`.common.Context`.
"""
