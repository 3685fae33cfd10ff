"""logwarden: keep every node of an NGINX cache cluster fresh.

Data flow: sources (tail a file, receive syslog) → logformat (parse) → triggers (decide)
→ dispatcher (refresh the other peers). The daemon wires the stages with bounded queues.
"""

__version__ = "0.1.0"
