"""The PostgreSQL engine's own tests, and the test server every PostgreSQL test uses."""
