"""crackseg-office: the fleet's MQTT stream -> a crack inventory and road segments in SQLite or PostGIS.

Runs on an office machine, never on a vehicle: it imports nothing from ``edge_agent`` (the two
share only the MQTT contract, docs/mqtt.md and the JSON Schemas in ``office/schemas``).
"""

__version__ = "0.1.0"
