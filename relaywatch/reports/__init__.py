"""What relaywatch shows: replay reports, timeline, HTML, digest, status, check, config."""
