"""How queued tasks get run: the :class:`~.base.TaskQueue` protocol, one job (:mod:`.jobs`), today's pool of
worker threads (:mod:`.threads`) and the engine process each worker runs its jobs in (:mod:`.engine_process`)."""
