"""Update bundles and their security: build, sign, publish, fetch, verify, install."""
