"""What the process tells about itself: access log, redaction, request log, metrics, probes."""
