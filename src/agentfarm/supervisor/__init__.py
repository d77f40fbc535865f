"""Run lifecycle: queue, launch, ingest, stop, reattach after restart; event fan-out."""
