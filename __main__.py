"""swarm: a Docker Swarm on AWS that survives the nightly teardown. Wiring only."""

import pulumi

from components.cluster import SwarmCluster
from components.settings import load_settings

settings = load_settings()
cluster = SwarmCluster(settings.cluster_name, settings)
for key, value in cluster.outputs.items():
    pulumi.export(key, value)
