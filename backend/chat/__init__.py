"""Chat: the gateway every chat takes (plan, admit, reserve, stream, settle), failover across a
model's connections, and conversation history. Above the catalog."""
