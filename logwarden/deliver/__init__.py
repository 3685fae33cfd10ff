"""Delivering: refresh requests to the peers, per-peer queues, retries and breakers."""
