"""The HTTP layer: schemas, routes and the one error table. Imports engine, never the reverse."""
