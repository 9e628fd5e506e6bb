"""The database: schema, engine, migrations and the queries the service runs."""
