"""The running service without HTTP: :mod:`.core` (what the routes call), the task record (:mod:`.tasks`),
every file name of a task (:mod:`.files`), access keys, webhooks, retention and logs, the store
(:mod:`.store`) and the queue that runs the jobs (:mod:`.queue`).

It may use the media layer and the evaluation's public names; it never imports the API.
"""
