"""Chat: the gateway every chat takes (plan, admit, reserve, stream, settle; failing over
along the catalog's routes) and conversation history. Above the catalog."""
