"""Central side: the MQTT collector that stores every device message once, and its report."""
