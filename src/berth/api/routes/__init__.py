"""Route modules, one per object type; each exposes register(router)."""
