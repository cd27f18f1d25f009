"""``stocksync``: the operator's command line. Drives the services from outside; no service imports it."""
