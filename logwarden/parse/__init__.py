"""Parsing: NGINX's log_format compiled into a line parser, and nginx.conf read for its logs."""
