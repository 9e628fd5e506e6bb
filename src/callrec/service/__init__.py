"""What the API and the background jobs share: context, settings, queue, ingest and the one leased-work core."""
