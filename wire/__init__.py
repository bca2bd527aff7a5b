"""The contract shared by device and collector: message schemas and MQTT addresses."""
