"""Kafka plumbing: topic catalog, client configs, partitioner, embedded broker, client SDK."""
