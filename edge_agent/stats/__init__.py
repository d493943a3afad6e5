"""Health numbers of the agent and its host."""
