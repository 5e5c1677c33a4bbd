"""Where the core's output meets storage: the Redis alert outbox (`outbox`), the audit log
(`audit`) and state snapshots (`snapshot`). Each is fed by the app and never blocks a cycle."""
