"""The swarm node agent: Python 3.9+, standard library only, one module per concern.

It ships byte for byte as it is in the repository (agent/ is installed whole under
/usr/local/lib/swarm/releases/<digest>/ and switched to atomically; see install.py), and
talks to the machine only through the docker, aws and systemctl CLIs (run.py).
"""
