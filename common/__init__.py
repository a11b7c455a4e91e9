"""The bottom layer every other package uses: settings, database schema, errors."""
