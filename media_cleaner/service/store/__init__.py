"""Where tasks are recorded: the :class:`~.base.TaskStore` protocol and its implementations (the embedded JSON
file, :mod:`.json_store`; an in-memory one, :mod:`.memory`)."""
