"""Business analytics on the request store: rollups, adoption metrics, cost, scheduled jobs."""
