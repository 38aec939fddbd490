"""`make bench`: throughput and latency of the real server, against a no-op baseline."""
