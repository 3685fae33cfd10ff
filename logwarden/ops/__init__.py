"""Operations: metrics and status, logwarden's own log lines, systemd notifications."""
