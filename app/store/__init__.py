"""The lesson records: models, migrations, the database connection and the one writer task."""
