"""Process and HTTP machinery: configuration, CLI, worker processes, serving,
middleware, problem documents, metrics, logs, periodic jobs, embedded PostgreSQL."""
