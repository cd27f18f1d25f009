"""Shared plumbing of the services: settings, Kafka and PostgreSQL clients, metrics, lifecycle, CLI."""
