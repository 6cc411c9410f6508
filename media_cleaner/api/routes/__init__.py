"""The HTTP routes, one module per resource; each calls the service and holds no business logic of its own."""
