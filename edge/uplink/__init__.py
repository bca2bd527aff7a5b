"""The MQTT uplink and the payloads it publishes."""
