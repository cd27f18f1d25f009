"""The webhook gateway: verify, normalise, make durable in Kafka, and only then answer 2xx."""
