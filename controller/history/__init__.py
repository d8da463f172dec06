"""Health history per box, downsampled into fixed buckets (see `history.History`)."""
