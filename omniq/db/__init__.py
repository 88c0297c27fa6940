"""Database layer: schema, engines, migrations."""
