"""The edge agent: pipeline stages, reporting, health and commands wired together."""
