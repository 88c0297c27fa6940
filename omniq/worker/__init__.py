"""Worker: the loop, leases and heartbeats, executors."""
