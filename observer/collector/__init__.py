"""The trace collector: OTLP/HTTP spans in, privacy-safe request records and usage metrics out.

``otlp`` decodes an export request (protobuf or JSON, gzip, bounded parse cost) and builds the
OTLP responses; ``mapping`` turns one span into a span record, reading only the attributes it needs
(never prompts or completions) and validating every value; ``join`` resolves the span records of a
trace into request records (engine span + client/gateway call + the user and department around
them), a pure function the store re-runs whenever a span of the trace arrives; ``ingest`` is the
pipeline (:class:`~observer.collector.ingest.TraceCollector`: decode -> map -> store -> count, plus
the collector's own metrics); ``usage`` folds finished requests into bounded-cardinality usage
counters (model, department, outcome). The store persists ``join``'s model, so ``join`` and
``mapping`` sit below ``observer.store`` and ``ingest`` above it (the ``serve`` contract in
``.importlinter``).
"""
