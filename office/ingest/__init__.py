"""Ingest: MQTT (``mqtt``) -> checked rows (``rows``) -> one transaction per batch (``writer``) -> acks (``worker``)."""
