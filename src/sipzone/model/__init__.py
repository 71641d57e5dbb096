"""Pure domain model: names, the matching rule, the tenancy tree and immutable snapshots."""
