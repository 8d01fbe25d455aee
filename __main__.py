"""swarm: a Docker Swarm on AWS that survives the nightly teardown. Wiring only."""

import gc

import pulumi

from components.cluster import SwarmCluster
from components.settings import load_settings

# Every resource keeps some hundred objects alive to the end of the run (its outputs'
# futures), so CPython's full collections rescan a graph that only grows and free next to
# nothing: at 1000 workers they were 9 s of a 22 s run. They now wait for 1000 middle
# collections instead of 10; the young generations still reclaim short-lived cycles.
gc.set_threshold(700, 10, 1000)

settings = load_settings()
cluster = SwarmCluster(settings.cluster_name, settings)
for key, value in cluster.outputs.items():
    pulumi.export(key, value)
