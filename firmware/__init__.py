"""The commune box: the agent and the wire contract it shares with the controller."""
