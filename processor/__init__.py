"""The processor: turns inventory events into the master record, exactly once in effect."""
