"""The store: schema, migrations, the repository every write goes through, and the change feed."""
