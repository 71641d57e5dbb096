"""Health of the sites: every node probes every site, writes what it sees to the store, and
serves the verdict of all the nodes (the rule is in sipzone.model.health).

Theory of operation.  The runtime hands :class:`~sipzone.health.monitor.HealthMonitor` the
snapshots read from the store (the *raw* holder) and the holder the services answer from; the
monitor publishes the raw snapshot with each site's ``healthy`` replaced by its verdict, so
the DNS (dns/records.py) and the edge follow health with no change of their own, and a
verdict that changes between two store revisions is published at once.  The first round of
probes runs before any listener is bound: the first answer already knows which sites are up
(PowerDNS's ifportup starts checking at the first query, pdns#12557).

The store is a mailbox, not a dependency: probes run and verdicts change with the store away
(the other nodes' views age out after VIEW_STALE seconds, and this node then decides alone);
each heartbeat writes this node's views again, so the store catches up the moment it answers.
"""
