"""``observer loadtest``: qualify a model against an SLO, find its capacity and cost per token."""
