"""Device identity and enrollment: CA, certificates, claim tokens, broker ACLs, technician CLI."""
