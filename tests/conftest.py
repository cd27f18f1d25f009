"""Fixture plugins: real Kafka (fix_kafka), real PostgreSQL (fix_pg), the pipeline's processes (fix_stack)."""

pytest_plugins = ["tests.fix_kafka", "tests.fix_pg", "tests.fix_stack"]
