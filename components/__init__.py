"""Components of the swarm program: one ComponentResource per module."""
