"""FastAPI routers, one per resource family."""
