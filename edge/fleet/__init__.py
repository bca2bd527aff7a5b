"""Fleet: signed model bundles, A/B slots with self-test and rollback, delivery, watchdog."""
