"""Load tests: locust journeys and the benchmark command (see README, "Performance")."""
