"""Fan-out: one consumer group per channel pushes the master quantity to every connection of it."""
