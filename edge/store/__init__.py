"""Durable local state: the journal of every frame and exam, the outbox of messages."""
